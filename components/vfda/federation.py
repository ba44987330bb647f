"""What one federation is, and how server and clients agree on it.

A *federation* is one (strategy, variant, seed) training run. The ServerApp runs many of them in one
Flower run (one simulation start-up); every message carries the federation's id and the serialized
:class:`~components.vfda.config.VfdaConfig`, so a ClientApp needs nothing but the message and its
node config (``partition-id``, or its own ``datalist`` on a real SuperNode).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from components.base import ConfigError
from components.vfda.config import STRATEGIES, VARIANTS, VfdaConfig


#: ablation variants whose VFDA layers use a fixed variance-combination rule, whatever ``vfda.rule`` says
FORCED_RULE_VARIANTS = {"vfda-product": "product", "vfda-fedfa": "fedfa"}


def effective_rule(variant: str, configured_rule: str) -> str:
    """The rule a VFDA variant's layers use: the forced one of an ablation variant, else ``vfda.rule``."""
    return FORCED_RULE_VARIANTS.get(variant, configured_rule)


#: the variants whose VFDA layers are enabled
VFDA_VARIANTS = frozenset(v for v in VARIANTS if v.startswith("vfda"))


@dataclass(frozen=True)
class Federation:
    strategy: str
    variant: str
    seed: int

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"federation strategy={self.strategy!r}: expected one of {list(STRATEGIES)}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"federation variant={self.variant!r}: expected one of {list(VARIANTS)}")

    @property
    def id(self) -> str:
        return f"{self.strategy}-{self.variant}-s{self.seed}"

    @property
    def uses_vfda(self) -> bool:
        return self.variant in VFDA_VARIANTS

    def vfda_rule(self, cfg: VfdaConfig) -> str:
        """The variance-combination rule this federation's VFDA layers use ("-" without VFDA)."""
        return effective_rule(self.variant, cfg.vfda.rule) if self.uses_vfda else "-"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(cfg: VfdaConfig) -> list[Federation]:
    """Every federation of the experiment: strategies x variants x seeds, then the ablations."""
    fed = cfg.federation
    seeds = [cfg.seed + s for s in fed.seeds]
    out = [Federation(st, v, s) for st in fed.strategies for v in fed.variants for s in seeds]
    out += [Federation(st, v, s) for st in fed.ablation_strategies for v in fed.ablation_variants
            for s in seeds if Federation(st, v, s) not in out]
    return out


def parse_federation_id(fed_id: str) -> Federation:
    """``<strategy>-<variant>-s<seed>`` -> :class:`Federation`; the strategy and the variant must be
    exactly one of the config's ``Strategy`` / ``Variant`` values (a typo such as ``vfdaa`` must not
    run as another variant), the seed a non-negative integer."""
    form = f"expected '<strategy>-<variant>-s<seed>' with strategy in {list(STRATEGIES)}, variant in {list(VARIANTS)}"
    try:
        strategy, rest = fed_id.split("-", 1)
        variant, seed_text = rest.rsplit("-s", 1)
        seed = int(seed_text)
    except ValueError:
        raise ConfigError(f"federation id {fed_id!r}: {form} and an integer seed") from None
    if strategy not in STRATEGIES:
        raise ConfigError(f"federation id {fed_id!r}: unknown strategy {strategy!r}; {form}")
    if variant not in VARIANTS:
        raise ConfigError(f"federation id {fed_id!r}: unknown variant {variant!r}; {form}")
    if seed < 0 or not seed_text.isdigit():
        raise ConfigError(f"federation id {fed_id!r}: seed {seed_text!r}; expected a non-negative integer")
    return Federation(strategy, variant, seed)


@dataclass(frozen=True)
class RunSettings:
    """What the ServerApp needs: the validated config, where the data is, where results go, and
    which federations to run (default: the whole plan)."""

    config: VfdaConfig
    data_dir: Path
    out_dir: Path
    federations: tuple[Federation, ...] = ()

    def resolved(self) -> list[Federation]:
        return list(self.federations) or plan(self.config)


def settings_from_run_config(run_config: Mapping[str, Any], cwd: Path | None = None) -> RunSettings:
    """Build :class:`RunSettings` from a Flower run config (``[tool.flwr.app.config]`` of
    ``components/vfda/pyproject.toml``, overridable with ``flwr run --run-config``).

    Keys: ``params-file`` (a params.yaml with a ``vfda`` section; empty = quick defaults),
    ``profile``, ``data-dir``, ``out-dir``, ``federations`` (comma-separated ids, empty = all).
    Relative paths are taken from the current directory (the repository root when run as documented).
    """
    from components.base import resolve_section
    from components.io import read_yaml_mapping

    cwd = cwd or Path.cwd()
    section: dict[str, Any] = {}
    params_file = str(run_config.get("params-file", "") or "")
    if params_file:
        path = (cwd / params_file).resolve()
        if not path.is_file():
            raise ConfigError(f"run config params-file={params_file!r}: {path} not found; expected a "
                              f"params.yaml with a 'vfda' section")
        what = "a params.yaml with a 'vfda' section"
        section = read_yaml_mapping(path, what).get("vfda") or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: vfda={repr(section)[:80]}; expected a mapping of vfda parameters in {what}")
    overrides: dict[str, Any] = {}
    if run_config.get("profile"):
        overrides["profile"] = str(run_config["profile"])
    cfg = resolve_section(VfdaConfig, section, overrides)
    feds = tuple(parse_federation_id(f.strip()) for f in str(run_config.get("federations", "") or "").split(",")
                 if f.strip())
    repeated = sorted({f.id for f in feds if feds.count(f) > 1})
    if repeated:
        raise ConfigError(f"run config federations={run_config.get('federations')!r}: {repeated} listed more than "
                          f"once; expected each federation once")
    return RunSettings(config=cfg, data_dir=(cwd / str(run_config.get("data-dir", "data/vfda"))).resolve(),
                       out_dir=(cwd / str(run_config.get("out-dir", "results/vfda/flwr-run"))).resolve(),
                       federations=feds)
