"""benchmarks/vfda/tune_lr.py --validation-volumes: fresh volumes with each training institute's protocol,
none of them a volume of the data stage, read back through the same preprocessing."""
from __future__ import annotations

import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The quick config with 3 volumes per institute, and its data stage output."""
    from components.vfda.config import VfdaConfig
    from components.vfda.data import generate_dataset

    cfg = VfdaConfig()
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={
        "institutes": [i.model_copy(update={"num_volumes": 3}) for i in cfg.data.institutes]})})
    root = tmp_path_factory.mktemp("vfda-data")
    return cfg, root, generate_dataset(cfg.data, root, seed=cfg.seed)


def test_validation_volumes_are_fresh_and_preprocessed_like_the_data(small, tmp_path):
    import torch

    from components.vfda.data import load_split, training_institutes

    cfg, root, manifest = small
    bench = load_script("benchmarks/vfda/tune_lr.py")
    val = bench.validation_split(cfg, manifest, 2, tmp_path / "a")
    again = bench.validation_split(cfg, manifest, 2, tmp_path / "b")
    names = [e["name"] for e in training_institutes(manifest)]
    assert list(val) == names and "E" not in val                       # training institutes only
    s = cfg.data.spatial_size
    for e in training_institutes(manifest):
        pairs = val[e["name"]]
        assert len(pairs) == 2
        assert all(x.shape == (1, s, s, s) and y.shape == (1, s, s, s) and y.dtype == torch.int64 for x, y in pairs)
        assert all(torch.equal(x, x2) for (x, _), (x2, _) in zip(pairs, again[e["name"]]))   # deterministic
        stage = [x for split in ("training", "validation") for x, _ in load_split(root / e["datalist"], split, cfg.data)]
        assert not any(torch.allclose(x, x2, atol=1e-3) for x, _ in pairs for x2 in stage)   # new volumes
        assert not torch.allclose(pairs[0][0], pairs[1][0], atol=1e-3)


def test_an_institute_without_a_protocol_is_named(small, tmp_path):
    from components.base import InputError

    cfg, _, manifest = small
    bench = load_script("benchmarks/vfda/tune_lr.py")
    renamed = {**manifest, "institutes": [{**e, "name": "Z" if e["name"] == "A" else e["name"]}
                                          for e in manifest["institutes"]]}
    with pytest.raises(InputError, match=r"--validation-volumes 1: institute 'Z'.*vfda.data.institutes"):
        bench.validation_split(cfg, renamed, 1, tmp_path)
