"""edge_runtime.moments: the normalisation's sums do not depend on the order or batching of rows."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.errors import ConfigError
from edge_runtime.moments import ExactMoments


def test_any_order_and_batching_gives_the_same_bits_close_to_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (20_001, 6)) * np.array([1, 1, 1, 1, 1, 30.0])
    x[:, 0] = rng.integers(0, 2, len(x))  # a 0/1 flag
    whole = ExactMoments(6)
    whole.add(x)
    pieces = ExactMoments(6)
    for lo in rng.permutation(np.arange(0, len(x), 777)):
        pieces.add(x[rng.permutation(np.arange(lo, min(lo + 777, len(x))))])
    merged = ExactMoments(6)
    merged.add(x[:5000])
    rest = ExactMoments(6)
    rest.add(x[5000:])
    merged.merge(rest)
    for other in (pieces, merged):
        for a, b in zip(whole.mean_std(), other.mean_std(), strict=True):
            np.testing.assert_array_equal(a, b)
    mean, std = whole.mean_std()
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(std, x.std(axis=0), rtol=1e-9)


def test_values_it_cannot_sum_exactly_are_refused():
    with pytest.raises(ConfigError, match="finite and below 1024"):
        ExactMoments(1).add(np.array([[np.inf]]))
    with pytest.raises(ConfigError, match="no training rows"):
        ExactMoments(2).mean_std()
