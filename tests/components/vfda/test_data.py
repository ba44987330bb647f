"""The synthetic institutes (MONAI datalist layout, acquisition shifts) and clear errors on bad
datalists: missing file, image/label shape mismatch, label values out of range, malformed JSON."""
from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from components.base import ConfigError, InputError, resolve_section
from components.vfda.config import DataConfig, InstituteConfig, VfdaConfig
from components.vfda.data import (check_federation, generate_dataset, load_split, nested_classes, read_datalist,
                                  read_manifest, validate_dataset)

TINY = DataConfig(
    field_of_view_mm=16.0, spatial_size=16, test_fraction=0.34,
    institutes=[
        InstituteConfig(name="A", num_volumes=3, grid=16, lesion_radius_mm=(2.0, 4.0)),
        InstituteConfig(name="B", num_volumes=3, grid=20, gamma=0.6, contrast=1.5, offset=0.2,
                        bias_field=0.1, noise_std=0.1, lesion_radius_mm=(2.0, 4.0)),
        InstituteConfig(name="E", num_volumes=2, grid=16, held_out=True, gamma=1.6,
                        lesion_radius_mm=(2.0, 4.0)),
    ])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("vfda-data")
    return root, generate_dataset(TINY, root, seed=3)


def test_layout_roles_and_splits(dataset):
    root, manifest = dataset
    assert read_manifest(root)["num_classes"] == 3
    roles = {e["name"]: (e["role"], e["num_training"], e["num_validation"]) for e in manifest["institutes"]}
    assert roles == {"A": ("train", 2, 1), "B": ("train", 2, 1), "E": ("held_out", 0, 2)}
    dl = read_datalist(root / "B" / "datalist.json")
    img = nib.load(dl["training"][0]["image"])
    assert img.shape == (20, 20, 20)
    np.testing.assert_allclose(img.header.get_zooms(), (0.8, 0.8, 0.8), rtol=1e-5)  # acquisition spacing
    validate_dataset(root, TINY)


def test_preprocessing_resamples_every_institute_to_one_grid(dataset):
    root, _ = dataset
    for name in ("A", "B", "E"):
        split = "validation" if name == "E" else "training"
        for x, y in load_split(root / name / "datalist.json", split, TINY):
            assert x.shape == y.shape == (1, 16, 16, 16)
            assert set(np.unique(y.numpy())) <= {0, 1, 2}
            assert abs(float(x.mean())) < 1e-3  # NormalizeIntensityd


def test_institutes_differ_in_acquisition(dataset):
    root, _ = dataset

    def contrast(name):  # lesion-core vs lesion-rim intensity ratio in raw (unnormalised) images
        dl = read_datalist(root / name / "datalist.json")
        vals = []
        for item in dl["training"] + dl["validation"]:
            img = np.asarray(nib.load(item["image"]).dataobj)
            lbl = np.asarray(nib.load(item["label"]).dataobj)
            if (lbl == 2).any() and (lbl == 1).any():
                vals.append(img[lbl == 2].mean() / img[lbl == 1].mean())
        return float(np.mean(vals))

    assert contrast("B") < contrast("A") < contrast("E")  # gamma 0.6 < 1.0 < 1.6 compresses/expands


def test_nested_classes_put_a_core_inside_each_lesion():
    zz, yy, xx = np.mgrid[:21, :21, :21]
    ball = (zz - 10) ** 2 + (yy - 10) ** 2 + (xx - 10) ** 2 <= 64
    lbl = nested_classes(ball, 3)
    assert set(np.unique(lbl)) == {0, 1, 2}
    assert lbl[10, 10, 10] == 2 and lbl[10, 10, 3] == 1 and lbl[0, 0, 0] == 0
    assert np.array_equal(nested_classes(ball, 2), ball.astype(np.uint8))


def _copy(root, tmp_path):
    import shutil

    dst = tmp_path / "data"
    shutil.copytree(root, dst)
    return dst


def test_missing_file_is_named(dataset, tmp_path):
    root = _copy(dataset[0], tmp_path)
    missing = root / "A" / "labelsTr" / "A_000.nii.gz"
    missing.unlink()
    with pytest.raises(InputError, match=r"label file .*A_000\.nii\.gz not found"):
        validate_dataset(root, TINY)


def test_shape_mismatch_is_named(dataset, tmp_path):
    root = _copy(dataset[0], tmp_path)
    path = root / "A" / "labelsTr" / "A_001.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 15), np.uint8), np.eye(4)), str(path))
    with pytest.raises(InputError, match=r"shape mismatch.*\(16, 16, 16\).*A_001\.nii\.gz is \(16, 16, 15\)"):
        load_split(root / "A" / "datalist.json", "training", TINY)


def test_label_out_of_range_is_named(dataset, tmp_path):
    root = _copy(dataset[0], tmp_path)
    path = root / "B" / "labelsTr" / "B_000.nii.gz"
    lbl = np.asarray(nib.load(path).dataobj).copy()
    lbl[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(lbl, np.diag([0.8, 0.8, 0.8, 1])), str(path))
    with pytest.raises(InputError, match=r"B_000\.nii\.gz has values \[7\]; expected integers in \[0, 2\]"):
        validate_dataset(root, TINY)


def test_malformed_datalist_and_manifest(dataset, tmp_path):
    root = _copy(dataset[0], tmp_path)
    (root / "A" / "datalist.json").write_text("{not json")
    with pytest.raises(InputError, match=r"A/datalist.json: not valid JSON"):
        validate_dataset(root, TINY)
    (root / "A" / "datalist.json").write_text(json.dumps({"training": [{"image": "x.nii.gz"}]}))
    with pytest.raises(InputError, match=r"training\[0\].*expected an object with 'image' and 'label'"):
        read_datalist(root / "A" / "datalist.json")
    (root / "institutes.json").unlink()
    with pytest.raises(InputError, match="institute manifest not found"):
        validate_dataset(root, TINY)


def test_multi_channel_image_is_named(dataset, tmp_path):
    """A (X, Y, Z, 2) image with an (X, Y, Z) label used to pass (only shape[:3] was compared) and
    then crash every training step of its client."""
    root = _copy(dataset[0], tmp_path)
    path = root / "A" / "imagesTr" / "A_000.nii.gz"
    img = nib.load(path)
    vol = np.asarray(img.dataobj)
    nib.save(nib.Nifti1Image(np.stack([vol, vol], -1), img.affine), str(path))
    with pytest.raises(InputError, match=r"image .*A_000\.nii\.gz has shape \(16, 16, 16, 2\); expected a "
                                         r"single-channel 3-D volume"):
        validate_dataset(root, TINY)
    with pytest.raises(InputError, match=r"A_000\.nii\.gz has shape \(16, 16, 16, 2\)"):
        load_split(root / "A" / "datalist.json", "training", TINY)


def test_single_channel_4d_image_is_accepted(dataset, tmp_path):
    root = _copy(dataset[0], tmp_path)
    path = root / "A" / "imagesTr" / "A_000.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., None], img.affine), str(path))
    validate_dataset(root, TINY)
    image, label = load_split(root / "A" / "datalist.json", "training", TINY)[0]
    assert tuple(image.shape) == tuple(label.shape) == (1, 16, 16, 16)


@pytest.mark.parametrize("src, dst", [("A", "E"), ("A", "A")])
def test_a_volume_listed_twice_is_named(dataset, tmp_path, src, dst):
    """A user's datalists could list a training volume again as a held-out institute's (or its own
    institute's) test volume: the held-out Dice would then be measured on training data."""
    root = _copy(dataset[0], tmp_path)
    train_item = json.loads((root / src / "datalist.json").read_text())["training"][0]
    dst_list = json.loads((root / dst / "datalist.json").read_text())
    rel = {k: os.path.relpath(root / src / train_item[k], root / dst) for k in ("image", "label")}
    dst_list["validation"].append(rel)
    (root / dst / "datalist.json").write_text(json.dumps(dst_list))
    with pytest.raises(InputError, match=rf"{dst}/datalist.json 'validation': image .*{src}_000\.nii\.gz is already "
                                         rf"listed in .*{src}/datalist.json 'training'"):
        validate_dataset(root, TINY)


def test_a_batch_larger_than_an_institutes_training_set_is_named(dataset, tmp_path):
    """With data.root the institutes come from the dataset: batch_size above a training institute's
    training volumes (A and B have 2 here) used to train on batches holding one volume twice."""
    import shutil

    root, manifest = dataset
    cfg = VfdaConfig.model_validate({"data": {"root": str(root)}, "federation": {"batch_size": 3}})
    with pytest.raises(ConfigError) as err:
        check_federation(manifest, root, cfg)
    assert str(err.value).startswith("federation.batch_size=3: institute A has 2 training volumes (")
    assert "expected at most 2, every batch draws distinct volumes" in str(err.value)
    check_federation(manifest, root, VfdaConfig.model_validate({"data": {"root": str(root)},
                                                                "federation": {"batch_size": 2}}))
    # the server of a deployment has the manifest but not the training institutes' datalists
    shutil.copy(root / "institutes.json", tmp_path / "institutes.json")
    with pytest.raises(ConfigError, match="federation.batch_size=3: institute A has 2 training volumes"):
        check_federation(read_manifest(tmp_path), tmp_path, cfg)
    # generated data: the config counts the training volumes the data stage writes (2 of 3 at 0.34)
    with pytest.raises(ConfigError, match="federation.batch_size=3: institute A has 2 training volumes"):
        resolve_section(VfdaConfig, {"data": TINY.model_dump(), "federation": {"batch_size": 3}})
