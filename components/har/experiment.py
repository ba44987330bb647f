"""The RT-HARE experiment, stage by stage, as plain functions (the Prefect flow only wires them).

- ``run_teacher``: optical flow (TV-L1, Farnebäck, DIS) of every chunk, then the stream CNNs: RGB
  on centre frames, one flow CNN per flow method (the TV-L1 one is IMFE's teacher).
- ``run_imfe``: IMFE distilled onto the TV-L1 teacher, exported to ONNX, parity checked.
- ``run_evaluate``: per-chunk features of every motion source, LSTR heads (same budget and seeds for
  every source), online accuracy, the latency benchmark and the streaming runtime.

Inputs and outputs are files (stages run as separate processes under DVC).
"""
from __future__ import annotations

import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

import numpy as np

from components.base import InputError
from components.har.chunks import (centre_frames, flip_flow, flip_frames, flow_tensor, rgb_tensor,
                                   split_chunks)
from components.har.config import HarConfig, OpticalFlowConfig
from components.har.data import load_clip, load_manifest
from components.har.figures import MIRROR
from components.har.opticalflow import FLOW_METHODS, clip_flows

Progress = Callable[..., None]


def _noop(*_: Any) -> None:
    pass


# ------------------------------------------------------------------------------------ clips
@dataclass
class Split:
    ids: list[str]
    labels: np.ndarray            # (clips,)
    chunks: list[np.ndarray]      # per clip (n_chunks, clip_len, H, W, 3) uint8


def load_splits(data_dir: Path, clip_len: int) -> tuple[dict[str, Any], dict[str, Split]]:
    manifest = load_manifest(data_dir)
    splits: dict[str, Split] = {}
    for name in ("train", "test"):
        clips = [c for c in manifest["clips"] if c["split"] == name]
        if not clips:
            raise InputError(f"{data_dir / 'manifest.json'}: no {name} clips; expected both splits")
        chunks = [split_chunks(load_clip(data_dir, c, manifest, clip_len), clip_len) for c in clips]
        splits[name] = Split([c["id"] for c in clips], np.array([c["label"] for c in clips]), chunks)
    return manifest, splits


def mirror_labels(labels: np.ndarray, classes: list[str]) -> np.ndarray:
    """Label of the horizontally mirrored clip (walk_left <-> walk_right, cw <-> ccw); classes the
    generator does not know (UCF101) are their own mirror."""
    index = {c: i for i, c in enumerate(classes)}
    table = np.array([index.get(MIRROR.get(c, c), i) for i, c in enumerate(classes)])
    return table[labels]


# ------------------------------------------------------------------------------------ flow
def _flow_job(path: str, size: tuple[int, int], frames_per_clip: int | None, cfg_json: dict,
              methods: tuple[str, ...]) -> dict[str, tuple[np.ndarray, float]]:
    import cv2

    from components.har.video import read_video

    cv2.setNumThreads(1)
    cfg = OpticalFlowConfig(**cfg_json)
    frames = read_video(path, size=size, min_frames=cfg.clip_len, max_frames=frames_per_clip)
    return {m: clip_flows(frames, m, cfg) for m in methods}


def compute_flows(data_dir: Path, manifest: dict[str, Any], cfg: OpticalFlowConfig,
                  methods: tuple[str, ...] = FLOW_METHODS, progress: Progress = _noop
                  ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, float]]]:
    """Stacked uint8 flow per method and clip id, and CPU time per method (``cpu_s``, ``pairs``,
    ``ms_per_pair``). Clips are spread over ``cfg.workers`` processes."""
    clips = manifest["clips"]
    size = (manifest["height"], manifest["width"])
    flows: dict[str, dict[str, np.ndarray]] = {m: {} for m in methods}
    timing = {m: {"cpu_s": 0.0, "pairs": 0} for m in methods}
    cfg_json = cfg.model_dump(by_alias=True)
    args = [(str(data_dir / c["path"]), size, manifest.get("frames_per_clip"), cfg_json, methods) for c in clips]
    t0 = time.perf_counter()

    def collect(i: int, res: dict[str, tuple[np.ndarray, float]]) -> None:
        for m, (q, cpu) in res.items():
            flows[m][clips[i]["id"]] = q
            timing[m]["cpu_s"] += cpu
            timing[m]["pairs"] += q.shape[0] * (cfg.clip_len - 1)
        if (i + 1) % 16 == 0 or i + 1 == len(clips):
            progress("har flow: %d/%d clips (%s) in %.0f s", i + 1, len(clips), "+".join(methods),
                     time.perf_counter() - t0)

    if cfg.workers == 1:
        for i, a in enumerate(args):
            collect(i, _flow_job(*a))
    else:
        with ProcessPoolExecutor(cfg.workers, mp_context=get_context("spawn")) as pool:
            for i, res in enumerate(pool.map(_flow_job, *zip(*args), chunksize=4)):
                collect(i, res)
    for t in timing.values():
        t["ms_per_pair"] = 1000.0 * t["cpu_s"] / max(1, t["pairs"])
    return flows, timing


# ------------------------------------------------------------------------------------ distillation set
DISTILL_STREAM = 2   # random-stream id of the distillation set; the data stage's clips use 0 (train), 1 (test)


def _render_job(seed: int, stream: int, index: int, action: str, data_cfg: dict, flow_cfg: dict
                ) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    from components.har.config import DataConfig
    from components.har.data import render_clip

    cv2.setNumThreads(1)
    fcfg = OpticalFlowConfig(**flow_cfg)
    frames = render_clip(action, np.random.default_rng([seed, stream, index]), DataConfig(**data_cfg))
    return split_chunks(frames, fcfg.clip_len), clip_flows(frames, "tvl1", fcfg)[0]


def render_distill_set(cfg: HarConfig, clips_per_class: int, stream: int = DISTILL_STREAM,
                       progress: Progress = _noop) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic clips rendered in memory with their TV-L1 flow: chunk frames (M, L, H, W, 3) uint8,
    stacked flow (M, 2(L-1), H, W) uint8 and chunk labels (M,).

    Clip ``i = k * classes + label`` draws from ``default_rng([seed, stream, i])``; the data stage's
    clips draw from streams 0 (train) and 1 (test), so the default stream 2 is a set disjoint from
    the HAR clips, and ``stream=1`` re-renders the test split (before its H.264 round trip). Clips are
    interleaved by class, so the first ``n * classes`` clips are class-balanced for every n. Spread
    over ``opticalflow.workers`` processes."""
    classes = cfg.data.classes
    jobs = [(cfg.seed, stream, k * len(classes) + c, name, cfg.data.model_dump(),
             cfg.opticalflow.model_dump(by_alias=True))
            for k in range(clips_per_class) for c, name in enumerate(classes)]
    t0 = time.perf_counter()
    out: list[tuple[np.ndarray, np.ndarray]] = []

    def done(i: int) -> None:
        if (i + 1) % 200 == 0 or i + 1 == len(jobs):
            progress("har distillation set: %d/%d clips rendered + TV-L1 in %.0f s", i + 1, len(jobs),
                     time.perf_counter() - t0)

    if cfg.opticalflow.workers == 1:
        for i, j in enumerate(jobs):
            out.append(_render_job(*j))
            done(i)
    else:
        with ProcessPoolExecutor(cfg.opticalflow.workers, mp_context=get_context("spawn")) as pool:
            for i, r in enumerate(pool.map(_render_job, *zip(*jobs), chunksize=8)):
                out.append(r)
                done(i)
    labels = np.concatenate([np.full(len(f), classes.index(j[3])) for (f, _), j in zip(out, jobs)])
    return np.concatenate([f for f, _ in out]), np.concatenate([q for _, q in out]), labels


def torch_device(name: str):
    """``imfe.device`` -> torch.device (``auto``: cuda when available); a clear error for a missing GPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"imfe.device={name!r}: torch sees no CUDA device here; expected cpu or auto")
    return torch.device(name)


def save_flows(path: Path, flows: dict[str, np.ndarray]) -> None:
    np.savez_compressed(path, **flows)


def load_flows(path: Path, ids: list[str]) -> list[np.ndarray]:
    """The stacked flow of clips ``ids`` from a ``save_flows`` archive; InputError naming the file when
    it is missing, not a readable archive of the har teacher stage or lacks a clip."""
    if not path.is_file():
        raise InputError(f"{path}: flow file not found; run the har teacher stage first")
    unreadable = f"{path}: not a readable flow archive (%s); expected the .npz of clip id -> flow the har " \
                 f"teacher stage writes (re-run it)"
    try:
        z = np.load(path)
    except Exception as err:  # truncated, not an npz, pickled: name the file, not numpy's internals
        raise InputError(unreadable % f"{type(err).__name__}: {err}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise InputError(unreadable % f"a single array of shape {z.shape}")
    with z:
        missing = [i for i in ids if i not in z.files]
        if missing:
            raise InputError(f"{path}: no flow for clips {missing[:3]}...; re-run the har teacher stage")
        try:
            return [z[i] for i in ids]
        except Exception as err:  # a corrupt member (bad CRC, truncated data)
            raise InputError(unreadable % f"{type(err).__name__}: {err}") from None


# ------------------------------------------------------------------------------------ nets on disk
def save_bundle(path: Path, **bundle: Any) -> None:
    import torch

    torch.save(bundle, path)


def load_bundle(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise InputError(f"{path}: model file not found; run the stage that writes it first")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or not a torch file: name the file, not torch's internals
        raise InputError(f"{path}: not a readable model bundle ({type(err).__name__}: {err}); re-run the "
                         f"stage that writes it") from None
    if not isinstance(bundle, dict) or "state_dict" not in bundle:
        raise InputError(f"{path}: not a model bundle of the har stages (expected a dict with a 'state_dict')")
    return bundle


def load_stream_net(path: Path):
    from components.har.config import StreamNetConfig
    from components.har.streams import StreamNet

    b = load_bundle(path)
    net = StreamNet(b["in_channels"], len(b["classes"]), StreamNetConfig(**b["config"]).widths)
    net.load_state_dict(b["state_dict"])
    return net.eval()


def load_imfe(path: Path):
    """The IMFE net of a bundle written by ``run_imfe`` (eval mode, CPU)."""
    from components.har.config import ImfeConfig
    from components.har.imfe import ImfeNet

    b = load_bundle(path)
    net = ImfeNet(b["height"], b["width"], b["num_frames"], b["feature_dim"], ImfeConfig(**b["config"]))
    net.load_state_dict(b["state_dict"])
    return net.eval()


def _inputs(kind: str, split: Split, flows: list[np.ndarray] | None):
    """Chunk tensors (N, C, H, W) and clip labels for a stream net."""
    import torch

    if kind == "rgb":
        xt = rgb_tensor(np.concatenate([centre_frames(c) for c in split.chunks]))
    else:
        assert flows is not None
        xt = flow_tensor(np.concatenate(flows))
    y = np.concatenate([np.full(len(c), l) for c, l in zip(split.chunks, split.labels)])
    return xt, torch.from_numpy(y).long()


def _parallel(cfg: HarConfig, jobs: int) -> tuple[int, int]:
    """(processes, torch threads per process) for ``jobs`` independent trainings: up to
    ``torch_threads`` processes of one thread each (the thread budget of the stage is unchanged)."""
    workers = max(1, min(jobs, cfg.torch_threads))
    return workers, max(1, cfg.torch_threads // workers)


# ------------------------------------------------------------------------------------ stages
def run_teacher(cfg: HarConfig, data_dir: Path, models_dir: Path, results_dir: Path,
                progress: Progress = _noop,
                inputs: tuple[dict[str, Any], dict[str, Split]] | None = None) -> dict[str, Any]:
    """Flow of every chunk + the RGB and flow stream CNNs. Writes ``results_dir/flows_<m>.npz``,
    ``models_dir/<stream>.pt`` and ``results_dir/teacher.json``; returns the summary. ``inputs``: the
    clips, ``load_splits(data_dir, cfg.opticalflow.clip_len)``, when the caller has read them already
    (read here when None): a caller that reads them before it creates ``models_dir`` and ``results_dir``
    leaves nothing behind on a bad input."""
    import torch

    from components.har.streams import stream_accuracy, train_stream

    torch.set_num_threads(cfg.torch_threads)
    manifest, splits = inputs if inputs is not None else load_splits(data_dir, cfg.opticalflow.clip_len)
    classes = manifest["classes"]
    flows, timing = compute_flows(data_dir, manifest, cfg.opticalflow, FLOW_METHODS, progress)
    for m in FLOW_METHODS:
        save_flows(results_dir / f"flows_{m}.npz", flows[m])
    mirror_label = torch.from_numpy(mirror_labels(np.arange(len(classes)), classes)).long()
    summary: dict[str, Any] = {"flow_cpu": timing, "chunk_accuracy": {}, "train_loss": {},
                               "chunks": {s: int(sum(len(c) for c in sp.chunks)) for s, sp in splits.items()}}
    for kind in ("rgb", *FLOW_METHODS):
        fl = {s: [flows[kind][i] for i in sp.ids] for s, sp in splits.items()} if kind != "rgb" else {}
        x, y = _inputs(kind, splits["train"], fl.get("train"))
        xt, yt = _inputs(kind, splits["test"], fl.get("test"))
        t0 = time.perf_counter()
        net, losses = train_stream(x, y, "rgb" if kind == "rgb" else "flow", len(classes), cfg.streams, cfg.seed,
                                   mirror_label, progress, name=kind)
        acc = stream_accuracy(net, xt, yt)
        progress("har %s stream: test chunk accuracy %.3f (%.0f s)", kind, acc, time.perf_counter() - t0)
        summary["chunk_accuracy"][kind] = acc
        summary["train_loss"][kind] = losses
        save_bundle(models_dir / f"{kind}.pt", state_dict=net.state_dict(), in_channels=int(x.shape[1]),
                    classes=classes, config=cfg.streams.model_dump(), kind=kind)
    (results_dir / "teacher.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _imfe_inputs(split: Split, flows: list[np.ndarray]):
    import torch

    frames = rgb_tensor(np.concatenate(split.chunks))            # (M, N, 3, H, W)
    return frames, flow_tensor(np.concatenate(flows)).to(torch.float32)


def feature_variance(target) -> float:
    """Per-dimension variance of (M, D) features, averaged over the D dimensions: the MSE of the
    best constant predictor (the per-dimension mean), on the scale of ``imfe.feature_mse``."""
    return float(((target - target.mean(0)) ** 2).mean())


def relative_mse(mse: float | None, target) -> dict[str, float | None]:
    """``val_relative_mse`` = MSE / ``feature_variance(target)`` = 1 - R^2 (a mean predictor scores 1,
    a perfect one 0) and ``val_r2`` = 1 - val_relative_mse; None without a validation MSE."""
    if mse is None:
        return {"val_relative_mse": None, "val_r2": None}
    rel = mse / max(1e-12, feature_variance(target))
    return {"val_relative_mse": rel, "val_r2": 1.0 - rel}


#: largest |onnxruntime - PyTorch| allowed on IMFE's motion feature (over the first 8 test chunks):
#: the streaming runtime runs the ONNX model, the accuracy is measured with the PyTorch one, so they must
#: compute the same features (float32 rounding gives ~1e-6 on the quick profile)
ONNX_PARITY_TOL = 1e-4


class OnnxParityError(RuntimeError):
    """The exported ONNX model does not compute what the PyTorch model computes."""


def check_onnx_parity(parity: dict[str, float], onnx_path: Path, chunks: int, tol: float = ONNX_PARITY_TOL) -> None:
    """:class:`OnnxParityError` unless ``parity["max_abs_diff"]`` (``imfe.onnx_parity``) is at most ``tol``
    (a NaN difference fails too)."""
    diff = parity["max_abs_diff"]
    if not diff <= tol:
        raise OnnxParityError(
            f"{onnx_path}: onnxruntime and PyTorch disagree on IMFE's motion feature by up to {diff:.3g} "
            f"(max abs difference over {chunks} test chunks, relative {parity.get('max_rel_diff', float('nan')):.3g}); "
            f"expected at most {tol:g} (experiment.ONNX_PARITY_TOL): the streaming runtime (ONNX) would not compute "
            f"the features the accuracy is measured with (PyTorch). Check imfe.onnx_opset and the onnxruntime "
            f"version; the imfe stage's outputs were not kept")


def imfe_inputs(cfg: HarConfig, data_dir: Path, teacher_models: Path, flows_dir: Path) -> dict[str, Any]:
    """What ``run_imfe`` reads, read and checked before anything is written: ``manifest`` and ``splits``
    (the clips), ``teacher`` (the TV-L1 flow CNN, ``teacher_models/tvl1.pt``), ``flows`` (split -> the
    TV-L1 flow of its clips, ``flows_dir/flows_tvl1.npz``; the test split, and the train split unless
    ``imfe.distill_clips_per_class`` renders a distillation set) and ``device`` (``imfe.device``).
    InputError naming the file (or parameter) when one is missing or malformed."""
    manifest, splits = load_splits(data_dir, cfg.opticalflow.clip_len)
    teacher = load_stream_net(teacher_models / "tvl1.pt")
    needed = ("test",) if cfg.imfe.distill_clips_per_class else ("test", "train")
    flows = {s: load_flows(flows_dir / "flows_tvl1.npz", splits[s].ids) for s in needed}
    return {"manifest": manifest, "splits": splits, "teacher": teacher, "flows": flows,
            "device": torch_device(cfg.imfe.device)}


def run_imfe(cfg: HarConfig, data_dir: Path, teacher_models: Path, flows_dir: Path, models_dir: Path,
             results_dir: Path, progress: Progress = _noop, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Distil IMFE onto the TV-L1 flow stream; ONNX export and parity. Writes ``models_dir/imfe.pt``,
    ``models_dir/imfe.onnx`` and ``results_dir/imfe.json``. ``inputs``: :func:`imfe_inputs` of the same
    arguments when the caller has read them already (read here when None).

    The ONNX model must reproduce the PyTorch one on the first 8 test chunks to within
    ``ONNX_PARITY_TOL`` (1e-4, max absolute difference of the motion feature), else
    :class:`OnnxParityError` (before ``imfe.json`` is written; the flow keeps none of the stage's outputs)."""
    import torch

    from components.har.imfe import distill, export_onnx, onnx_parity
    from components.har.streams import stream_features

    torch.set_num_threads(cfg.torch_threads)
    if inputs is None:
        inputs = imfe_inputs(cfg, data_dir, teacher_models, flows_dir)
    manifest, splits, teacher = inputs["manifest"], inputs["splits"], inputs["teacher"]
    for p in teacher.parameters():
        p.requires_grad_(False)
    te = _imfe_inputs(splits["test"], inputs["flows"]["test"])
    distill_set: dict[str, Any] = {"source": "har train split"}
    if cfg.imfe.distill_clips_per_class:
        t0 = time.perf_counter()
        frames, flows, _ = render_distill_set(cfg, cfg.imfe.distill_clips_per_class, progress=progress)
        tr = rgb_tensor(frames), flow_tensor(flows)
        distill_set = {"source": "synthetic, disjoint from the har clips", "stream": DISTILL_STREAM,
                       "clips_per_class": cfg.imfe.distill_clips_per_class,
                       "render_and_tvl1_seconds": time.perf_counter() - t0}
    else:
        tr = _imfe_inputs(splits["train"], inputs["flows"]["train"])
    distill_set["chunks"] = int(len(tr[0]))
    device = inputs["device"]
    teacher.to(device)
    t0 = time.perf_counter()
    net, hist = distill(tr[0], tr[1], teacher.features, cfg.imfe, manifest["height"], manifest["width"],
                        cfg.seed, val=te, progress=progress, device=device)
    seconds = time.perf_counter() - t0
    net, teacher = net.cpu(), teacher.cpu()
    save_bundle(models_dir / "imfe.pt", state_dict=net.state_dict(), height=net.height, width=net.width,
                num_frames=net.num_frames, feature_dim=net.feature_dim, config=cfg.imfe.model_dump())
    onnx_path = export_onnx(net, models_dir / "imfe.onnx", cfg.imfe.onnx_opset)
    parity_frames = te[0][:8]
    parity = onnx_parity(net, onnx_path, parity_frames)
    check_onnx_parity(parity, onnx_path, len(parity_frames))
    target = stream_features(teacher, te[1])
    summary = {"train_mse": hist["train_mse"], "val_mse": hist["val_mse"], "train_seconds": seconds,
               "distill_set": distill_set, "device": str(device), "onnx": parity,
               "teacher_feature_mean_square": float(target.pow(2).mean()),
               "teacher_feature_variance": feature_variance(target),
               "params": int(sum(p.numel() for p in net.parameters())),
               **relative_mse(hist["val_mse"][-1] if hist["val_mse"] else None, target)}
    progress("har imfe: val mse %.5f (teacher feature variance %.5f, R2 %.3f), onnx max abs diff %.2e",
             hist["val_mse"][-1], summary["teacher_feature_variance"], summary["val_r2"], parity["max_abs_diff"])
    (results_dir / "imfe.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


# ------------------------------------------------------------------------------------ evaluate
def rgb_features(split: Split, nets: dict[str, Any], flip: bool = False) -> list[Any]:
    """Per clip (n_chunks, D_rgb) RGB-stream features (the same for every source)."""
    import torch

    with torch.no_grad():
        return [nets["rgb"].features(rgb_tensor(centre_frames(flip_frames(c) if flip else c))) for c in split.chunks]


def source_features(source: str, split: Split, flows: dict[str, list[np.ndarray]], nets: dict[str, Any],
                    rgb: list[Any], flip: bool = False) -> list[np.ndarray]:
    """Per clip (n_chunks, D) head inputs of ``source``: the RGB feature, concatenated with the
    motion feature unless ``source == "rgb"``. ``flip`` mirrors every input first. ``rgb``: the
    split's ``rgb_features`` (computed with the same ``flip``), shared by every source."""
    import torch

    if len(rgb) != len(split.chunks):
        raise ValueError(f"rgb: {len(rgb)} clips of RGB features for a split of {len(split.chunks)} clips")
    out = []
    with torch.no_grad():
        for k, chunks in enumerate(split.chunks):
            c = flip_frames(chunks) if flip and source == "imfe" else chunks
            feats = [rgb[k]]
            if source == "imfe":
                feats.append(nets["imfe"](rgb_tensor(c)))
            elif source in FLOW_METHODS:
                q = flows[source][k]
                feats.append(nets[source].features(flow_tensor(flip_flow(q) if flip else q)))
            out.append(torch.cat(feats, 1).numpy())
    return out


def evaluation_inputs(cfg: HarConfig, data_dir: Path, models_dir: Path, results_dir: Path):
    """What the evaluate stage reads: ``(manifest, splits, nets, flows, meta)`` -- the clips, the
    stream CNNs and IMFE (``models_dir/teacher``, ``models_dir/imfe``), every split's flow per
    method (``results_dir/teacher``) and the metadata saved with the heads."""
    manifest, splits = load_splits(data_dir, cfg.opticalflow.clip_len)
    nets: dict[str, Any] = {k: load_stream_net(models_dir / "teacher" / f"{k}.pt") for k in ("rgb", *FLOW_METHODS)}
    nets["imfe"] = load_imfe(models_dir / "imfe" / "imfe.pt")
    flows = {s: {m: load_flows(results_dir / "teacher" / f"flows_{m}.npz", sp.ids) for m in FLOW_METHODS}
             for s, sp in splits.items()}
    meta = {"classes": manifest["classes"], "clip_len": cfg.opticalflow.clip_len, "height": manifest["height"],
            "width": manifest["width"], "fps": manifest["fps"], "frames_per_clip": manifest.get("frames_per_clip"),
            "opticalflow": cfg.opticalflow.model_dump(by_alias=True)}
    return manifest, splits, nets, flows, meta


def evaluate_heads(cfg: HarConfig, classes: list[str], splits: dict[str, Split], flows: dict[str, dict[str, list[np.ndarray]]],
                   nets: dict[str, Any], heads_dir: Path | None, meta: dict[str, Any],
                   progress: Progress = _noop) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train an LSTR head per source and seed on train (+ mirrored) clips; accuracy on test.
    Returns one row per (source, seed) and per-source summaries. Saves the first seed's heads.

    ``online_accuracy``: every test chunk, each clip streamed on its own (the window starts empty at
    the clip's first chunk); ``clip_accuracy``: the last chunk of every clip; ``stream_accuracy``:
    every test chunk with the test clips back to back in one continuous stream, the window sliding
    across clip boundaries as the real-time runtime's does."""
    tr, te = splits["train"], splits["test"]
    rgb = {(s, f): rgb_features(sp, nets, f) for s, sp in (("train", tr), ("test", te)) for f in (False, True)
           if not (s == "test" and f) and (f is False or cfg.streams.flip)}
    # each source's features go to one file that its seeds' jobs read, instead of being pickled into
    # every job (a UCF101-size feature set is GBs); the parent holds one source's features at a time.
    # The files of all sources stay in the system's temporary folder until every head is trained
    with tempfile.TemporaryDirectory(prefix="har-heads-") as tmp:
        jobs = []
        for source in cfg.evaluate.sources:
            f_tr = source_features(source, tr, flows["train"], nets, rgb["train", False])
            y_tr = list(tr.labels)
            if cfg.streams.flip:
                f_tr += source_features(source, tr, flows["train"], nets, rgb["train", True], flip=True)
                y_tr += list(mirror_labels(tr.labels, classes))
            f_te = source_features(source, te, flows["test"], nets, rgb["test", False])
            path = Path(tmp) / f"{source}.npz"
            save_clip_features(path, train=f_tr, test=f_te)
            del f_tr, f_te
            jobs += [(source, seed, str(path), y_tr, list(te.labels)) for seed in cfg.evaluate.seeds]
        results = _run_head_jobs(cfg, jobs, len(classes), heads_dir, meta, progress)
    rows, per_source = [r for r, _ in results], {}
    for source in cfg.evaluate.sources:
        mine = [(r, s) for r, s in results if r["source"] == source]
        accs = [r["online_accuracy"] for r, _ in mine]
        clip_accs = [r["clip_accuracy"] for r, _ in mine]
        stream_accs = [r["stream_accuracy"] for r, _ in mine]
        by_step = [s for _, s in mine]
        per_source[source] = {"online_accuracy": float(np.mean(accs)), "online_accuracy_std": float(np.std(accs)),
                              "clip_accuracy": float(np.mean(clip_accs)),
                              "stream_accuracy": float(np.mean(stream_accs)),
                              "stream_accuracy_std": float(np.std(stream_accs)),
                              "accuracy_by_step": np.mean(by_step, 0).tolist()}
        progress("har %s: online accuracy %.3f +- %.3f, clip accuracy %.3f, continuous-stream accuracy %.3f "
                 "(%d seeds)", source, per_source[source]["online_accuracy"], per_source[source]["online_accuracy_std"],
                 per_source[source]["clip_accuracy"], per_source[source]["stream_accuracy"], len(accs))
    return rows, per_source


def save_clip_features(path: Path, **splits: list[np.ndarray]) -> None:
    """Per-clip (n_chunks, D) feature lists of each named split, concatenated into one array per split
    plus the clips' chunk counts (``load_clip_features`` splits them again, values unchanged)."""
    arrays: dict[str, np.ndarray] = {}
    for name, feats in splits.items():
        arrays[name] = np.concatenate(feats)
        arrays[f"{name}_chunks"] = np.array([len(f) for f in feats], dtype=np.int64)
    np.savez(path, **arrays)


def load_clip_features(path: str | Path, name: str) -> list[np.ndarray]:
    with np.load(path) as z:
        flat, counts = z[name], z[f"{name}_chunks"]
    return np.split(flat, np.cumsum(counts)[:-1])


def _run_head_jobs(cfg: HarConfig, jobs: list[tuple], num_classes: int, heads_dir: Path | None,
                   meta: dict[str, Any], progress: Progress) -> list[Any]:
    """``_head_job`` for every job, in ``_parallel`` processes; results in job order."""
    tcfg = cfg.temporal
    workers, threads = _parallel(cfg, len(jobs))
    save = str(heads_dir) if heads_dir is not None else None
    common = (num_classes, tcfg.model_dump(), cfg.evaluate.seeds[0], save, meta, threads)
    progress("har heads: %d (source, seed) heads in %d process(es) of %d torch thread(s)", len(jobs), workers, threads)
    results: list[Any] = [None] * len(jobs)

    def done(i: int, result: Any) -> None:
        results[i] = result
        row = result[0]
        progress("har heads: %s seed %d done (%d/%d), online accuracy %.3f, %.1f s", row["source"], row["seed"],
                 sum(r is not None for r in results), len(jobs), row["online_accuracy"], row["train_seconds"])

    if workers == 1:
        for i, j in enumerate(jobs):
            done(i, _head_job(*j, *common))
    else:  # heads of ~600 tiny steps gain little from a 2nd thread: one thread per process instead
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_head_job, *j, *common): i for i, j in enumerate(jobs)}
            try:
                for fut in as_completed(futures):
                    done(futures[fut], fut.result())
            except BaseException:  # a failed head (or Ctrl-C) stops the queued ones instead of training them
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return results


def _head_job(source: str, seed: int, features: str, y_tr: list[int], y_te: list[int], num_classes: int,
              tcfg_json: dict, save_seed: int, heads_dir: str | None, meta: dict[str, Any],
              threads: int) -> tuple[dict[str, Any], list[float]]:
    """Train and score one LSTR head (``evaluate_heads``) on the ``train`` / ``test`` clip features
    saved in ``features`` (``save_clip_features``); saves ``heads_dir/<source>.pt`` for ``save_seed``.
    Returns the row and the accuracy by step."""
    import torch

    from components.har.config import TemporalConfig
    from components.har.temporal import clip_windows, predict_last, stream_windows, train_head, training_windows

    torch.set_num_threads(threads)
    f_tr, f_te = load_clip_features(features, "train"), load_clip_features(features, "test")
    tcfg = TemporalConfig(**tcfg_json)
    window = tcfg.long_memory + tcfg.short_window
    xt, vt, yt, steps = clip_windows(f_te, y_te, window)
    xs, vs, ys = stream_windows(f_te, y_te, window)
    t0 = time.perf_counter()
    x, v, y = training_windows(f_tr, y_tr, window, tcfg.stream_passes, seed)
    head, losses = train_head(x, v, y, num_classes, tcfg, seed, name=f"{source} head seed {seed}")
    pred = predict_last(head, xt, vt).numpy()
    hit = pred == yt.numpy()
    last = np.r_[steps[1:] == 0, True]               # the final step of every test clip
    stream_acc = float((predict_last(head, xs, vs) == ys[:, -1]).float().mean())
    step_acc = [float(hit[steps == s].mean()) for s in range(int(steps.max()) + 1)]
    row = {"source": source, "seed": seed, "online_accuracy": float(hit.mean()), "clip_accuracy": float(hit[last].mean()),
           "stream_accuracy": stream_acc, "final_loss": losses[-1], "train_seconds": time.perf_counter() - t0}
    if heads_dir is not None and seed == save_seed:
        save_bundle(Path(heads_dir) / f"{source}.pt", state_dict=head.state_dict(), in_dim=int(x.shape[-1]),
                    config=tcfg_json, meta=meta)
    return row, step_acc


def stream_sequence(split: Split, frames: int) -> tuple[np.ndarray, list[int]]:
    """The streaming benchmark's input: the first ``frames`` frames of ``split``'s clips back to back
    (each clip's whole chunks) as (frames, H, W, 3) uint8, and the label of every chunk of the clips
    used (one per prediction). :class:`InputError` naming ``evaluate.stream_frames`` when the split has
    fewer frames (the stream would be cut short)."""
    available = sum(int(c.shape[0] * c.shape[1]) for c in split.chunks)
    if frames > available:
        raise InputError(f"evaluate.stream_frames={frames}: the test split has {available} frames "
                         f"({len(split.chunks)} clips, whole chunks); expected at most {available}")
    clips, truth, n = [], [], 0
    for c, label in zip(split.chunks, split.labels):
        clips.append(c.reshape(-1, *c.shape[2:]))
        truth += [int(label)] * len(c)                 # the label of every chunk (one prediction each)
        n += len(clips[-1])
        if n >= frames:
            break
    return np.concatenate(clips)[:frames], truth


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def latency_sample(split: Split, n: int) -> np.ndarray:
    """``n`` test chunks (L, H, W, 3) for the latency benchmark, deterministic and spread over the
    classes (flow time depends on the content): the classes take turns (class c gets ``n // C`` or
    one more chunk), and each class's chunks are taken at an even stride over all its clips' chunks."""
    classes = sorted(set(int(l) for l in split.labels))
    n = min(n, sum(len(c) for c in split.chunks))
    per_class = {c: [(k, j) for k, l in enumerate(split.labels) if l == c for j in range(len(split.chunks[k]))]
                 for c in classes}                  # (clip, chunk) indices, in clip order
    take, left = dict.fromkeys(classes, 0), n
    while left:                                         # classes take turns (one with few chunks drops out)
        for c in classes:
            if left and take[c] < len(per_class[c]):
                take[c], left = take[c] + 1, left - 1
    picked = {c: [per_class[c][i * len(per_class[c]) // take[c]] for i in range(take[c])] for c in classes}
    order = [picked[c][i] for i in range(max(take.values())) for c in classes if i < take[c]]
    return np.stack([split.chunks[k][j] for k, j in order])


def latency_benchmark(cfg: HarConfig, split: Split, nets: dict[str, Any], onnx_path: Path,
                      progress: Progress = _noop) -> dict[str, Any]:
    """Per-chunk wall time of every motion source, measured side by side: for each test chunk the
    sources run in turn (batch 1, ``evaluate.threads`` threads for OpenCV, torch and onnxruntime);
    the chunks are ``latency_sample``'s, spread over every class and clip.
    Flow sources are timed as flow (clip_len-1 pairs) and flow CNN; IMFE on onnxruntime (the
    deployment path) and on torch."""
    import cv2
    import torch

    from components.har.imfe import onnx_session
    from components.har.opticalflow import chunk_flow, make_flow_fn, to_gray

    threads = cfg.evaluate.threads
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    sess = onnx_session(onnx_path, threads)
    fns = {m: make_flow_fn(m, cfg.opticalflow) for m in FLOW_METHODS}
    chunks = latency_sample(split, cfg.evaluate.latency_chunks)
    times: dict[str, list[float]] = {k: [] for k in
                                     [*(f"{m}_flow" for m in FLOW_METHODS), *(f"{m}_cnn" for m in FLOW_METHODS),
                                      "imfe_onnx", "imfe_torch", "rgb_cnn"]}
    with torch.no_grad():
        for rep in range(2):                          # the first pass is warm-up
            for c in chunks:
                gray = to_gray(c)
                x_rgb = rgb_tensor(c[None])
                x_np = x_rgb.numpy()
                sample: dict[str, float] = {}
                for m in FLOW_METHODS:
                    q, sample[f"{m}_flow"] = _timed(lambda: chunk_flow(gray, fns[m], cfg.opticalflow.bound))
                    qt = flow_tensor(q[None])
                    _, sample[f"{m}_cnn"] = _timed(lambda: nets[m].features(qt))
                _, sample["imfe_onnx"] = _timed(lambda: sess.run(["motion_feature"], {"frames": x_np}))
                _, sample["imfe_torch"] = _timed(lambda: nets["imfe"](x_rgb))
                _, sample["rgb_cnn"] = _timed(lambda: nets["rgb"].features(rgb_tensor(c[len(c) // 2][None])))
                if rep:
                    for k, v in sample.items():
                        times[k].append(v)
            if rep == 0:
                progress("har latency: warm-up done over %d chunks", len(chunks))
    ms = {k: {"p50": 1000 * float(np.median(v)), "p99": 1000 * float(np.percentile(v, 99)),
              "mean": 1000 * float(np.mean(v))} for k, v in times.items()}
    out: dict[str, Any] = {"threads": threads, "chunks": int(len(chunks)), "pairs_per_chunk": cfg.opticalflow.clip_len - 1,
                           "resolution": f"{chunks.shape[2]}x{chunks.shape[3]}", "ms": ms}
    for m in FLOW_METHODS:
        out[f"{m}_ms_p50"] = ms[f"{m}_flow"]["p50"]
        out[f"{m}_feature_ms_p50"] = ms[f"{m}_flow"]["p50"] + ms[f"{m}_cnn"]["p50"]
    out["imfe_ms_p50"] = ms["imfe_onnx"]["p50"]
    out["imfe_torch_ms_p50"] = ms["imfe_torch"]["p50"]
    out["rgb_ms_p50"] = ms["rgb_cnn"]["p50"]
    # headline: TV-L1 flow alone (without its flow CNN) against the whole IMFE network
    out["speedup_imfe_vs_tvl1"] = out["tvl1_ms_p50"] / out["imfe_ms_p50"]
    out["speedup_imfe_vs_tvl1_feature"] = out["tvl1_feature_ms_p50"] / out["imfe_ms_p50"]
    out["speedup_imfe_torch_vs_tvl1"] = out["tvl1_ms_p50"] / out["imfe_torch_ms_p50"]
    out["speedup_imfe_vs_farneback"] = out["farneback_ms_p50"] / out["imfe_ms_p50"]
    out["speedup_imfe_vs_dis"] = out["dis_ms_p50"] / out["imfe_ms_p50"]
    return out
