"""Synthetic multi-institute 3D segmentation data in a MONAI datalist layout, and its loader.

Layout written by :func:`generate_dataset` (a real multi-site dataset in the same layout drops in)::

    <root>/institutes.json            manifest: classes, spacing, one entry per institute and its role
    <root>/<name>/datalist.json       MONAI (Decathlon-style) datalist: "training" / "validation"
    <root>/<name>/imagesTr/*.nii.gz   float32 volumes, affine = acquisition spacing
    <root>/<name>/labelsTr/*.nii.gz   uint8 labels in [0, num_classes)

Lesion geometry comes from MONAI's ``create_test_image_3d`` (spheres); with more than two classes each
lesion gets nested sub-regions (a core deeper inside it, BraTS-like), so the classes are defined by
anatomy and relative contrast rather than by absolute intensity. Each institute's acquisition
shift is applied with MONAI transforms: intensity gamma (``AdjustContrast``), contrast and offset,
a smooth multiplicative bias field (``RandBiasField``) and Rician noise (``RandRicianNoise``); each
institute also has its own grid (voxel spacing) and lesion-size prior.

The loader (:func:`load_split`) validates the datalist (missing files, image/label shape mismatch,
label values out of range raise :class:`~components.base.InputError` naming the file) and runs the
MONAI preprocessing: ``LoadImaged`` -> ``Spacingd`` to a common spacing -> ``NormalizeIntensityd``
-> ``ResizeWithPadOrCropd`` to the network's input size.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

from components.base import InputError
from components.vfda.config import DataConfig, InstituteConfig, VfdaConfig, num_local_test

MANIFEST = "institutes.json"
DATALIST = "datalist.json"

# tissue intensities before acquisition: background, then the foreground classes (dim -> bright)
_BACKGROUND = 0.2
_TEXTURE = 0.04


def _class_intensities(num_classes: int) -> np.ndarray:
    return np.concatenate([[_BACKGROUND], np.linspace(0.55, 0.95, num_classes - 1)])


def nested_classes(lesion: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels of nested sub-regions (BraTS-like: a core inside each lesion): class ``k`` is the part of
    a lesion deeper than ``0.8 (k - 1) / (num_classes - 1)`` of that lesion's maximal depth (for 3
    classes: a core of about 0.6 of the lesion radius)."""
    from scipy.ndimage import distance_transform_edt, label as connected, maximum

    label = lesion.astype(np.uint8)
    if num_classes <= 2 or not lesion.any():
        return label
    depth = distance_transform_edt(lesion)
    comps, n = connected(lesion)
    deepest = np.asarray(maximum(depth, comps, index=np.arange(1, n + 1)), dtype=float)
    rel = np.zeros_like(depth)
    rel[comps > 0] = depth[comps > 0] / deepest[comps[comps > 0] - 1]
    for k in range(2, num_classes):
        label[rel > 0.8 * (k - 1) / (num_classes - 1)] = k
    return label


def _derive_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def synthesize_volume(inst: InstituteConfig, data: DataConfig, rng: np.random.RandomState
                      ) -> tuple[np.ndarray, np.ndarray, float]:
    """One (image, label, spacing_mm) acquired with ``inst``'s protocol."""
    from monai.data import create_test_image_3d
    from monai.transforms import AdjustContrast, RandBiasField, RandRicianNoise
    from scipy.ndimage import gaussian_filter

    g = inst.grid
    spacing = data.field_of_view_mm / g
    rad_min = max(1, int(round(inst.lesion_radius_mm[0] / spacing)))
    rad_max = max(rad_min + 1, int(round(inst.lesion_radius_mm[1] / spacing)))
    if g <= 2 * rad_max:
        raise InputError(f"institute {inst.name}: lesion_radius_mm={inst.lesion_radius_mm} is {rad_max} voxels "
                         f"at grid {g}; expected a grid larger than twice the maximum radius")
    num_objs = int(rng.randint(inst.num_lesions[0], inst.num_lesions[1] + 1))
    _, lesions = create_test_image_3d(g, g, g, num_objs=num_objs, rad_max=rad_max, rad_min=rad_min,
                                      noise_max=0.0, num_seg_classes=1, random_state=rng)
    label = nested_classes(lesions > 0, data.num_classes)
    # tissue: class intensity (+/- 0.04 per volume) + smooth texture (about 2 mm correlation length)
    levels = _class_intensities(data.num_classes) + rng.uniform(-0.04, 0.04, size=data.num_classes)
    image = levels[label]
    texture = gaussian_filter(rng.standard_normal((g, g, g)), sigma=2.0 / spacing)
    image = image + _TEXTURE * texture / (texture.std() + 1e-8)
    image = np.clip(image, 0.0, None)[None].astype(np.float32)  # channel first for MONAI transforms

    # acquisition shift of this institute
    image = AdjustContrast(gamma=inst.gamma)(image)
    image = inst.contrast * image + inst.offset
    if inst.bias_field > 0:
        bias = RandBiasField(degree=3, coeff_range=(-inst.bias_field, inst.bias_field), prob=1.0)
        bias.set_random_state(seed=_derive_seed(rng.randint(2**31 - 1)))
        image = bias(image)
    if inst.noise_std > 0:
        noise = RandRicianNoise(prob=1.0, std=inst.noise_std, relative=False, sample_std=False)
        noise.set_random_state(seed=_derive_seed(rng.randint(2**31 - 1)))
        image = noise(image)
    return np.asarray(image, dtype=np.float32)[0], label, spacing


def _save_nifti(array: np.ndarray, spacing: float, path: Path) -> None:
    import nibabel as nib

    affine = np.diag([spacing, spacing, spacing, 1.0])
    nib.save(nib.Nifti1Image(array, affine), str(path))


def generate_dataset(cfg: DataConfig, out_dir: str | Path, seed: int = 0,
                     progress: Callable[..., None] | None = None) -> dict[str, Any]:
    """Write every institute (NIfTI + datalist) under ``out_dir``; return the manifest."""
    out = Path(out_dir)
    manifest: dict[str, Any] = {
        "num_classes": cfg.num_classes,
        "labels": {"0": "background", **{str(c): f"lesion-{c}" for c in range(1, cfg.num_classes)}},
        "field_of_view_mm": cfg.field_of_view_mm,
        "institutes": [],
    }
    for idx, inst in enumerate(cfg.institutes):
        rng = np.random.RandomState(_derive_seed(seed, idx, 7919))
        folder = out / inst.name
        (folder / "imagesTr").mkdir(parents=True)
        (folder / "labelsTr").mkdir(parents=True)
        items = []
        for v in range(inst.num_volumes):
            image, label, spacing = synthesize_volume(inst, cfg, rng)
            stem = f"{inst.name}_{v:03d}"
            _save_nifti(image, spacing, folder / "imagesTr" / f"{stem}.nii.gz")
            _save_nifti(label, spacing, folder / "labelsTr" / f"{stem}.nii.gz")
            items.append({"image": f"imagesTr/{stem}.nii.gz", "label": f"labelsTr/{stem}.nii.gz"})
        if inst.held_out:
            training, validation = [], items
        else:
            n_test = num_local_test(len(items), cfg.test_fraction)
            training, validation = items[:-n_test], items[-n_test:]
        datalist = {"name": inst.name, "description": "synthetic institute (MONAI create_test_image_3d)",
                    "acquisition": inst.model_dump(mode="json"), "spacing_mm": cfg.field_of_view_mm / inst.grid,
                    "labels": manifest["labels"], "training": training, "validation": validation}
        (folder / DATALIST).write_text(json.dumps(datalist, indent=2) + "\n")
        manifest["institutes"].append({
            "name": inst.name, "role": "held_out" if inst.held_out else "train",
            "datalist": f"{inst.name}/{DATALIST}", "num_training": len(training),
            "num_validation": len(validation), "spacing_mm": cfg.field_of_view_mm / inst.grid,
        })
        if progress:
            progress("vfda data: institute %s (%s) %d volumes at %d^3, %.2f mm", inst.name,
                     "held out" if inst.held_out else "train", inst.num_volumes, inst.grid,
                     cfg.field_of_view_mm / inst.grid)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# --------------------------------------------------------------------------------------------
# reading and validation
# --------------------------------------------------------------------------------------------
def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise InputError(f"{path}: institute manifest not found; expected the output of the vfda data stage "
                         f"(python -m flows vfda data)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    insts = manifest.get("institutes") if isinstance(manifest, dict) else None
    if not isinstance(insts, list) or not insts:
        raise InputError(f"{path}: expected a mapping with a non-empty 'institutes' list")
    for i, entry in enumerate(insts):
        missing = [k for k in ("name", "role", "datalist") if k not in entry]
        if missing:
            raise InputError(f"{path}: institutes[{i}] lacks {missing}")
        if entry["role"] not in ("train", "held_out"):
            raise InputError(f"{path}: institutes[{i}].role={entry['role']!r}; expected 'train' or 'held_out'")
    return manifest


def training_institutes(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in manifest["institutes"] if e["role"] == "train"]


def held_out_institutes(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in manifest["institutes"] if e["role"] == "held_out"]


def read_datalist(path: str | Path) -> dict[str, Any]:
    """Parse a MONAI datalist; items are resolved to absolute paths (relative to the datalist)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: datalist not found; expected a MONAI datalist JSON file")
    try:
        datalist = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(datalist, dict):
        raise InputError(f"{path}: expected a JSON object with 'training' and 'validation' lists")
    out = dict(datalist)
    for split in ("training", "validation"):
        items = datalist.get(split, [])
        if not isinstance(items, list):
            raise InputError(f"{path}: '{split}' is {type(items).__name__}; expected a list of "
                             f"{{'image': ..., 'label': ...}} items")
        resolved = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not {"image", "label"} <= set(item):
                raise InputError(f"{path}: {split}[{i}]={item!r}; expected an object with 'image' and 'label'")
            resolved.append({k: str((path.parent / item[k]).resolve()) for k in ("image", "label")})
        out[split] = resolved
    return out


def validate_items(items: list[dict[str, str]], num_classes: int, datalist: str | Path) -> None:
    """Raise InputError on a missing file, an image or label that is not one 3-D volume (multi-channel,
    2-D, time series), an image/label shape mismatch or a label out of range."""
    import nibabel as nib

    for item in items:
        for key in ("image", "label"):
            if not Path(item[key]).is_file():
                raise InputError(f"{datalist}: {key} file {item[key]} not found")
        try:
            img = nib.load(item["image"])
            lbl = nib.load(item["label"])
        except Exception as err:  # nibabel raises several types for unreadable files
            raise InputError(f"{datalist}: cannot read {item['image']} / {item['label']} as NIfTI ({err})") from None
        for key, shape in (("image", tuple(img.shape)), ("label", tuple(lbl.shape))):
            if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
                raise InputError(f"{datalist}: {key} {item[key]} has shape {shape}; expected a single-channel "
                                 f"3-D volume, shape (X, Y, Z) or (X, Y, Z, 1)")
        ishape, lshape = tuple(img.shape[:3]), tuple(lbl.shape[:3])
        if ishape != lshape:
            raise InputError(f"{datalist}: shape mismatch, image {item['image']} is {ishape} but label "
                             f"{item['label']} is {lshape}; expected equal shapes")
        values = np.unique(np.asarray(lbl.dataobj))
        bad = values[(values < 0) | (values >= num_classes) | (values != np.round(values))]
        if bad.size:
            raise InputError(f"{datalist}: label {item['label']} has values {bad[:8].tolist()}; expected "
                             f"integers in [0, {num_classes - 1}] (num_classes={num_classes})")


_CACHE: dict[tuple, list[tuple[Any, Any]]] = {}
_CACHE_LOCK = threading.Lock()


def preprocessing(cfg: DataConfig):
    """The MONAI preprocessing every volume goes through (training, evaluation, held-out)."""
    from monai.transforms import (Compose, EnsureTyped, LoadImaged, NormalizeIntensityd,
                                  ResizeWithPadOrCropd, Spacingd)

    keys = ("image", "label")
    s = cfg.spatial_size
    return Compose([
        LoadImaged(keys=keys, image_only=True, ensure_channel_first=True),
        Spacingd(keys=keys, pixdim=(cfg.target_spacing_mm,) * 3, mode=("bilinear", "nearest")),
        NormalizeIntensityd(keys="image"),
        ResizeWithPadOrCropd(keys=keys, spatial_size=(s, s, s)),
        EnsureTyped(keys=keys, track_meta=False),
    ])


def load_split(datalist_path: str | Path, split: str, cfg: DataConfig) -> list[tuple[Any, Any]]:
    """Validated, preprocessed ``(image[1,S,S,S] float32, label[1,S,S,S] int64)`` tensors of one
    split (``training`` or ``validation``); cached per process."""
    import torch

    path = Path(datalist_path).resolve()
    if not path.is_file():
        raise InputError(f"{path}: datalist not found; expected a MONAI datalist JSON file")
    key = (str(path), path.stat().st_mtime_ns, split, cfg.model_dump_json())
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    datalist = read_datalist(path)
    items = datalist[split]
    validate_items(items, cfg.num_classes, path)
    transform = preprocessing(cfg)
    out = []
    for item in items:
        d = transform(dict(item))
        out.append((d["image"].float(), d["label"].round().to(torch.int64)))
    with _CACHE_LOCK:
        _CACHE[key] = out
    return out


def validate_site(datalist_path: str | Path, num_classes: int, role: str = "train") -> dict[str, Any]:
    """Check one institute's datalist and volumes (what a SuperNode can check on its own data):
    a training institute needs training items, every institute test items, and every item must pass
    :func:`validate_items`. Returns the parsed datalist."""
    path = Path(datalist_path)
    datalist = read_datalist(path)
    if role == "train" and len(datalist["training"]) < 1:
        raise InputError(f"{path}: no 'training' items; a training institute needs at least 1")
    if len(datalist["validation"]) < 1:
        raise InputError(f"{path}: no 'validation' items; every institute needs a test split")
    validate_items(datalist["training"] + datalist["validation"], num_classes, path)
    return datalist


def validate_dataset(data_dir: str | Path, cfg: DataConfig,
                     roles: tuple[str, ...] = ("train", "held_out")) -> dict[str, Any]:
    """Check the manifest and the datalists of the institutes with a role in ``roles`` (default:
    every institute) before any federation starts (fail fast, clearly). The ServerApp checks only
    the held-out institutes (the data it evaluates itself): on a deployment with per-site data the
    training institutes' volumes are on their SuperNodes, which check them (:func:`validate_site`)."""
    manifest = read_manifest(data_dir)
    if int(manifest.get("num_classes", cfg.num_classes)) != cfg.num_classes:
        raise InputError(f"{Path(data_dir) / MANIFEST}: num_classes={manifest.get('num_classes')}; expected "
                         f"{cfg.num_classes} (vfda.data.num_classes)")
    if len(training_institutes(manifest)) < 2:
        raise InputError(f"{Path(data_dir) / MANIFEST}: fewer than 2 training institutes")
    seen: dict[str, str] = {}  # image -> "<datalist> <split>" where it was first listed
    for entry in manifest["institutes"]:
        if entry["role"] not in roles:
            continue
        path = Path(data_dir) / entry["datalist"]
        datalist = validate_site(path, cfg.num_classes, entry["role"])
        for split in ("training", "validation"):
            for item in datalist[split]:
                where = f"{path} '{split}'"
                if item["image"] in seen:  # a test volume that was trained on, or one volume twice
                    raise InputError(f"{where}: image {item['image']} is already listed in {seen[item['image']]}; "
                                     f"expected every volume in exactly one institute and split (no overlap "
                                     f"between training and test volumes or between institutes)")
                seen[item["image"]] = where
    return manifest


def check_federation(manifest: dict[str, Any], data_dir: str | Path, cfg: VfdaConfig) -> None:
    """The federation parameters against the training institutes the dataset really has (with
    ``data.root`` they come from its manifest, not from ``data.institutes``): ``min_train_clients``,
    ``fault_partition``, and ``batch_size`` against each training institute's number of training
    volumes (its datalist's ``training`` items where the datalist is here, else the manifest's
    ``num_training``; with neither, as for per-site data on a deployment whose manifest lacks
    ``num_training``, that institute's batch size is not checked here)."""
    from components.base import ConfigError

    n_train = len(training_institutes(manifest))
    where = Path(data_dir) / MANIFEST
    if cfg.federation.min_train_clients > n_train:
        raise InputError(f"federation.min_train_clients={cfg.federation.min_train_clients}: {where} lists "
                         f"{n_train} training institutes; expected min_train_clients <= {n_train} (no round "
                         f"could aggregate)")
    if cfg.simulation.fault_partition >= n_train:
        raise ConfigError(f"simulation.fault_partition={cfg.simulation.fault_partition}: expected the index of a "
                          f"training institute, 0 to {n_train - 1} ({n_train} training institutes in {where})")
    batch = cfg.federation.batch_size
    for entry in training_institutes(manifest):
        datalist = Path(data_dir) / entry["datalist"]
        n_vol = len(read_datalist(datalist)["training"]) if datalist.is_file() else entry.get("num_training")
        if isinstance(n_vol, int) and batch > n_vol:
            raise ConfigError(f"federation.batch_size={batch}: institute {entry['name']} has {n_vol} training "
                              f"volumes ({datalist if datalist.is_file() else where}); expected at most {n_vol}, "
                              f"every batch draws distinct volumes")


def import_dataset(src: str | Path, out_dir: str | Path, cfg: DataConfig) -> dict[str, Any]:
    """Validate a dataset in this layout (e.g. a real multi-site dataset) and copy it to ``out_dir``."""
    import shutil

    src = Path(src).expanduser().resolve()
    if not src.is_dir():
        raise InputError(f"vfda.data.root={str(src)!r}: not a folder; expected a folder with {MANIFEST} and "
                         f"one MONAI datalist per institute")
    validate_dataset(src, cfg)
    shutil.copytree(src, out_dir, dirs_exist_ok=True)
    return read_manifest(out_dir)
