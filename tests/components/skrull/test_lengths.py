"""The Table 1 samplers reproduce the paper's published length quantiles."""
import numpy as np
import pytest

from components.base import ConfigError
from components.skrull.lengths import TABLE1, TABLE1_THRESHOLDS, cdf_table, distribution, scale_lengths


@pytest.mark.parametrize("name", sorted(TABLE1))
def test_sampler_hits_table1_cdf(name):
    dist = TABLE1[name]
    lengths = dist.sample(200_000, np.random.default_rng(0))
    measured = cdf_table(lengths)
    for threshold, share in dist.cdf:
        if threshold < dist.longest:
            assert measured[f"lt_{threshold // 1024}k"] == pytest.approx(share, abs=0.004), (name, threshold)
    assert lengths.min() >= dist.shortest and lengths.max() <= dist.longest


def test_chatqa2_is_bimodal_and_the_others_long_tailed():
    rng = np.random.default_rng(1)
    wiki = TABLE1["wikipedia"].sample(50_000, rng)
    chat = TABLE1["chatqa2"].sample(50_000, rng)
    assert np.median(wiki) < 1024 < np.percentile(wiki, 99) * 4
    assert np.mean(chat >= 8 * 1024) > 0.55      # ~60 % long sequences


def test_same_seed_same_lengths_and_scaling():
    d = distribution("lmsyschat1m")
    a, b = d.sample(1000, np.random.default_rng(3)), d.sample(1000, np.random.default_rng(3))
    assert np.array_equal(a, b)
    s = scale_lengths(a, 32)
    assert np.all(s >= 1) and np.all(s == -(-a // 32))
    assert TABLE1_THRESHOLDS[0] == 1024


def test_bad_names_and_factors():
    with pytest.raises(ConfigError, match="expected one of"):
        distribution("c4")
    with pytest.raises(ConfigError, match="length_scale"):
        scale_lengths(np.array([10]), 0)
