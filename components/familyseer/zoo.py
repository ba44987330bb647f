"""The model zoo: PyTorch models with random weights, imported into Relax, fused, split into tasks.

Every model is built locally (no downloads) from a seed:

==============  ===========================================================  =====================
name            what                                                          input (batch 1)
==============  ===========================================================  =====================
mlp_tiny        three Linear layers (a matmul family of three; tests)         4 x 32
resnet_tiny     ResNet-style CNN: stem, strided conv, residual conv, linear     3 x 32 x 32
resnet          ResNet-18-style CNN, 4 stages x 2 basic blocks, width 16..128  3 x 64 x 64
mobilenetv2     MobileNetV2-style CNN (inverted residuals, depthwise, ReLU6)   3 x 64 x 64
bert            BERT-style encoder (``transformers.BertModel``, 2 layers)      32 token ids
unet            MONAI ``UNet`` (2-D, 3 levels, residual units)                 1 x 64 x 64
gpt2            GPT-2-style decoder block (``transformers.GPT2Model``, 1 layer) 32 token ids
==============  ===========================================================  =====================

The CNNs have no BatchNorm layers: they stand for inference graphs in which BatchNorm is already folded
into the convolution weights and biases (what deployment compilers tune; with random weights there is
nothing to fold). MONAI's U-Net keeps its InstanceNorm, which cannot be folded.

Import path (TVM 0.27): ``torch.export`` -> ``relax.frontend.torch.from_exported_program`` ->
``DecomposeOpsForInference, LegalizeOps, AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR``
(without legalization and fusion MetaSchedule finds no tasks) -> ``relax_integration.extract_tasks``.
The same fused module is later compiled with the tuning database, so the task keys match.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from components.base import InputError
from components.familyseer.measure import lean_tensor_intrinsics

MODEL_INPUTS = {
    "mlp_tiny": "matrix 4x32",
    "resnet_tiny": "image 1x3x32x32", "resnet": "image 1x3x64x64", "mobilenetv2": "image 1x3x64x64",
    "bert": "32 token ids", "unet": "image 1x1x64x64", "gpt2": "32 token ids",
}


# --------------------------------------------------------------------------------------------------
# PyTorch models


def _resnet(widths: tuple[int, ...], blocks: int, size: int):
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
            self.shortcut = nn.Conv2d(cin, cout, 1, stride) if (stride != 1 or cin != cout) else None

        def forward(self, x):
            y = self.conv2(torch.relu(self.conv1(x)))
            return torch.relu(y + (x if self.shortcut is None else self.shortcut(x)))

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, widths[0], 3, 1, 1)
            layers, cin = [], widths[0]
            for i, w in enumerate(widths):
                for b in range(blocks):
                    layers.append(BasicBlock(cin, w, 2 if (b == 0 and i > 0) else 1))
                    cin = w
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(cin, 10)

        def forward(self, x):
            x = self.layers(torch.relu(self.stem(x)))
            return self.fc(x.mean(dim=(2, 3)))

    return ResNet(), (torch.randn(1, 3, size, size),)


def _mlp_tiny():
    import torch
    from torch import nn

    class MLPTiny(nn.Module):
        """Three linear layers of different shapes (a 'matmul' family of three) — used by the tests."""

        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(32, 64), nn.Linear(64, 32), nn.Linear(32, 8)

        def forward(self, x):
            return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    return MLPTiny(), (torch.randn(4, 32),)


def _resnet_tiny():
    import torch
    from torch import nn

    class ResNetTiny(nn.Module):
        """Stem conv, a strided conv, a conv with an identity shortcut, linear classifier: four tasks."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, 1, 1)
            self.down = nn.Conv2d(16, 32, 3, 2, 1)
            self.conv = nn.Conv2d(32, 32, 3, 1, 1)
            self.fc = nn.Linear(32 * 16 * 16, 10)

        def forward(self, x):
            x = torch.relu(self.down(torch.relu(self.stem(x))))
            x = torch.relu(self.conv(x) + x)
            return self.fc(torch.flatten(x, 1))

    return ResNetTiny(), (torch.randn(1, 3, 32, 32),)


def _mobilenetv2():
    import torch
    from torch import nn

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = cin * expand
            layers: list[nn.Module] = []
            if expand != 1:
                layers += [nn.Conv2d(cin, hidden, 1), nn.ReLU6()]
            layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden), nn.ReLU6(),
                       nn.Conv2d(hidden, cout, 1)]
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    class MobileNetV2(nn.Module):
        """MobileNetV2 layout at width 0.5 (t, c, n, s as in the paper's Table 2, last stages trimmed)."""

        def __init__(self) -> None:
            super().__init__()
            cfg = [(1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 2, 2), (6, 32, 2, 2), (6, 48, 1, 1)]
            layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU6()]
            cin = 16
            for t, c, n, s in cfg:
                for i in range(n):
                    layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            layers += [nn.Conv2d(cin, 128, 1), nn.ReLU6()]
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(128, 10)

        def forward(self, x):
            return self.fc(self.features(x).mean(dim=(2, 3)))

    return MobileNetV2(), (torch.randn(1, 3, 64, 64),)


def _bert():
    import torch
    from torch import nn
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=256, max_position_embeddings=64, attn_implementation="eager")

    class BertEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel(cfg, add_pooling_layer=False)

        def forward(self, input_ids):
            return self.bert(input_ids=input_ids).last_hidden_state

    return BertEncoder(), (torch.randint(0, cfg.vocab_size, (1, 32)),)


def _gpt2():
    import torch
    from torch import nn
    from transformers import GPT2Config, GPT2Model

    cfg = GPT2Config(vocab_size=512, n_embd=64, n_layer=1, n_head=2, n_positions=64, bos_token_id=0,
                     eos_token_id=0, attn_implementation="eager")

    class GPT2Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gpt2 = GPT2Model(cfg)

        def forward(self, input_ids):
            return self.gpt2(input_ids=input_ids, use_cache=False).last_hidden_state

    return GPT2Block(), (torch.randint(0, cfg.vocab_size, (1, 32)),)


def _unet():
    import torch
    from monai.networks.nets import UNet

    net = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2),
               num_res_units=1)
    return net, (torch.randn(1, 1, 64, 64),)


BUILDERS: dict[str, Callable[[], tuple[Any, tuple[Any, ...]]]] = {
    "mlp_tiny": _mlp_tiny,
    "resnet_tiny": _resnet_tiny,
    "resnet": lambda: _resnet((16, 32, 64, 128), 2, 64),
    "mobilenetv2": _mobilenetv2,
    "bert": _bert,
    "unet": _unet,
    "gpt2": _gpt2,
}


def build_torch_model(name: str, seed: int):
    """``(module in eval mode, example inputs)`` with weights drawn from ``seed``."""
    import torch

    if name not in BUILDERS:
        raise InputError(f"model {name!r}: unknown; expected one of {sorted(BUILDERS)}")
    torch.manual_seed(seed)
    module, inputs = BUILDERS[name]()
    return module.eval(), inputs


# --------------------------------------------------------------------------------------------------
# Relax import and task extraction


def to_relax(module: Any, inputs: tuple[Any, ...]):
    """PyTorch module -> fused Relax IRModule (weights bound as constants)."""
    lean_tensor_intrinsics()
    import torch
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    with torch.no_grad():
        exported = torch.export.export(module, inputs)
    mod = from_exported_program(exported, keep_params_as_input=False)
    passes = [relax.transform.DecomposeOpsForInference(), relax.transform.LegalizeOps(),
              relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
              relax.transform.FuseOps(), relax.transform.FuseTIR()]
    return tvm.transform.Sequential(passes)(mod)


def make_target(cores: int):
    import tvm

    return tvm.target.Target({"kind": "llvm", "num-cores": int(cores)})


def target_dict(target) -> dict[str, Any]:
    """A Target as a plain JSON dict (TVM 0.27 prints targets as JSON)."""
    return json.loads(str(target))


_OP_NAMES: frozenset[str] | None = None


def relax_op_names() -> frozenset[str]:
    """Operator names known to Relax without namespace (``conv2d``, ``layer_norm``, ``matmul``, ...)."""
    global _OP_NAMES
    if _OP_NAMES is None:
        import tvm

        names = set()
        for full in tvm.ir.Op.list_op_names():
            if full.startswith("relax."):
                names.add(full.split(".")[-1])
        _OP_NAMES = frozenset(names)
    return _OP_NAMES


def split_ops(task_name: str, vocabulary: frozenset[str]) -> list[str]:
    """Operators of a fused task name, in order: ``fused_conv2d_transpose1_add6`` -> [conv2d_transpose, add].

    Relax names a fused function ``fused_`` + the legalized names of its operators joined by ``_``,
    each with a numeric suffix when the name repeats (``conv2d1``). Operator names themselves may contain
    ``_`` (``layer_norm``), so tokens are merged greedily into the longest known operator name.
    """
    name = task_name[len("fused_"):] if task_name.startswith("fused_") else task_name
    tokens = [t for t in name.split("_") if t]
    ops, i = [], 0
    while i < len(tokens):
        for j in range(len(tokens), i, -1):
            cand = re.sub(r"\d+$", "", "_".join(tokens[i:j])) or "_".join(tokens[i:j])
            if cand in vocabulary or j == i + 1:
                ops.append(cand if cand in vocabulary else re.sub(r"\d+$", "", tokens[i]) or tokens[i])
                i = j
                break
    return ops


@dataclass
class TaskInfo:
    """One MetaSchedule tuning task of a model, with the keys the family policies group on."""

    name: str
    weight: int
    flops: float
    ops: list[str]            # operators of the fused subgraph, in order
    anchor: str               # name of the anchor (reduction) block; "" if none
    core_op: str              # FamilySeer 'op' key: the first (core) operator of the subgraph
    subgraph_hash: str        # FamilySeer 'hash' key: md5 of the subgraph's operation sequence
    complex: bool             # has a reduction block (Ansor's "complex task")
    structural_hash: str = ""  # identity of the workload (same as the tuning database's key)
    extra: dict[str, Any] = field(default_factory=dict)


def _blocks(mod: Any) -> list[tuple[str, str]]:
    """(block name, iteration-kind string such as 'SSSSRRR') of every block of a TIR module, in order."""
    text = mod.script()
    names = re.findall(r'T\.sblock\("([^"]+)"\)', text)
    kinds = re.findall(r'T\.axis\.remap\("([A-Z]+)"', text)
    names = [n for n in names if n != "root"]
    kinds += [""] * (len(names) - len(kinds))
    return list(zip(names, kinds))


def describe_task(task: Any) -> TaskInfo:
    """Family keys of one ``ExtractedTask`` (see components/familyseer/family.py)."""
    from tvm.s_tir.analysis import find_anchor_sblock
    from tvm.s_tir.meta_schedule.utils import shash2hex

    mod = task.dispatched[0]
    anchor_block = find_anchor_sblock(mod)
    anchor = "" if anchor_block is None else str(anchor_block.name_hint)
    ops = split_ops(str(task.task_name), relax_op_names())
    core = ops[0] if ops else str(task.task_name)
    # grouped / depthwise convolutions are their own family, as in the artifact ('nn.depthwiseconv2d')
    if core.startswith("conv") and ("group" in anchor or "depthwise" in anchor.lower()):
        core = "group_" + core
    sequence = "|".join(f"{n}:{k}" for n, k in _blocks(mod))
    from tvm.s_tir.analysis import estimate_tir_flops

    return TaskInfo(
        name=str(task.task_name), weight=int(task.weight), flops=float(estimate_tir_flops(mod)),
        ops=ops, anchor=anchor, core_op=core,
        subgraph_hash=hashlib.md5(sequence.encode()).hexdigest(),
        complex=anchor_block is not None,
        structural_hash=shash2hex(mod),
    )


def extract_tasks(fused_mod: Any, target: Any, complex_only: bool) -> tuple[list[Any], list[TaskInfo]]:
    """MetaSchedule's task extraction, plus the family keys of each task (same order)."""
    lean_tensor_intrinsics()
    from tvm.s_tir import meta_schedule as ms

    tasks = list(ms.relax_integration.extract_tasks(fused_mod, target))
    infos = [describe_task(t) for t in tasks]
    if complex_only:
        keep = [i for i, info in enumerate(infos) if info.complex]
        tasks, infos = [tasks[i] for i in keep], [infos[i] for i in keep]
    return tasks, infos


# --------------------------------------------------------------------------------------------------
# the data stage's files


def export_model(name: str, out_dir: Path, seed: int, target_cores: int, complex_only: bool) -> dict[str, Any]:
    """Write ``relax.json`` (fused module), ``torch_state.pt``, ``inputs.pt`` and ``tasks.json``."""
    import torch
    import tvm

    module, inputs = build_torch_model(name, seed)
    fused = to_relax(module, inputs)
    target = make_target(target_cores)
    _, infos = extract_tasks(fused, target, complex_only)
    if not infos:
        raise InputError(f"model {name!r}: MetaSchedule extracted no tunable tasks")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "relax.json").write_text(tvm.ir.save_json(fused))
    torch.save(module.state_dict(), out_dir / "torch_state.pt")
    torch.save(list(inputs), out_dir / "inputs.pt")
    manifest = {"model": name, "seed": seed, "input": MODEL_INPUTS[name],
                "parameters": int(sum(p.numel() for p in module.parameters())),
                "target": target_dict(target), "complex_tasks_only": complex_only,
                "num_tasks": len(infos), "tasks": [asdict(t) for t in infos]}
    (out_dir / "tasks.json").write_text(json.dumps(manifest, indent=2))
    return manifest


@dataclass
class LoadedModel:
    name: str
    fused: Any                      # Relax IRModule
    manifest: dict[str, Any]
    torch_module: Any = None
    inputs: tuple[Any, ...] = ()


def load_model(zoo_dir: Path, name: str, with_torch: bool = False) -> LoadedModel:
    """Read a model written by :func:`export_model` (InputError names the missing / bad file)."""
    lean_tensor_intrinsics()
    import tvm

    folder = zoo_dir / name
    paths = {k: folder / k for k in ("relax.json", "tasks.json", "torch_state.pt", "inputs.pt")}
    for key, path in paths.items():
        if not path.is_file():
            raise InputError(f"{path}: missing (model {name!r}); run the data stage: dvc repro familyseer_data")
    try:
        manifest = json.loads(paths["tasks.json"].read_text())
        tasks = manifest["tasks"]
        if not isinstance(tasks, list) or not tasks:
            raise ValueError("'tasks' must be a non-empty list")
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{paths['tasks.json']}: malformed task manifest ({err}); expected the JSON the "
                         f"data stage writes") from None
    try:
        fused = tvm.ir.load_json(paths["relax.json"].read_text())
    except Exception as err:  # TVM raises its own error types for bad JSON
        raise InputError(f"{paths['relax.json']}: not a serialized Relax IRModule ({type(err).__name__}: "
                         f"{str(err)[:200]})") from None
    loaded = LoadedModel(name, fused, manifest)
    if with_torch:
        import torch

        module, _ = build_torch_model(name, int(manifest.get("seed", 0)))
        module.load_state_dict(torch.load(paths["torch_state.pt"], weights_only=True))
        loaded.torch_module = module.eval()
        loaded.inputs = tuple(torch.load(paths["inputs.pt"], weights_only=True))
    return loaded
