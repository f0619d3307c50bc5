"""Chunk-merged statistics against numpy on the concatenated samples."""

import numpy as np
import pytest

from qep_jax._statistics import Moments, merge_all


@pytest.mark.parametrize("sizes", [(1, 1), (3, 5, 2), (1, 7, 1, 4), (10,)])
def test_merge_matches_numpy_on_concatenation(sizes):
    rng = np.random.default_rng(len(sizes))
    # Large offset relative to the spread: naive sum/sum-of-squares would lose ~8 digits here.
    chunks = [1e4 + rng.normal(size=(n, 3, 2)) for n in sizes]
    merged = merge_all(Moments.from_samples(c) for c in chunks)
    allx = np.concatenate(chunks)
    assert merged.count == allx.shape[0]
    np.testing.assert_allclose(merged.mean, allx.mean(axis=0), rtol=1e-14)
    if allx.shape[0] > 1:
        # Variance of O(1) data around 1e4: relative error ~ eps * 1e4^2 / 1 would show for naive sums.
        np.testing.assert_allclose(merged.variance, allx.var(axis=0, ddof=1), rtol=1e-9)
        np.testing.assert_allclose(merged.standard_error, allx.std(axis=0, ddof=1) / np.sqrt(allx.shape[0]),
                                   rtol=1e-9)


def test_merge_order_only_changes_rounding():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(n, 4)) for n in (2, 3, 4)]
    a = merge_all(Moments.from_samples(c) for c in chunks)
    b = merge_all(Moments.from_samples(c) for c in chunks[::-1])
    np.testing.assert_allclose(a.mean, b.mean, rtol=0, atol=1e-15)
    np.testing.assert_allclose(a.variance, b.variance, rtol=1e-13)


def test_single_realization_has_undefined_variance():
    m = Moments.from_samples(np.array([[1.0, 2.0]]))
    assert m.count == 1
    assert np.all(np.isnan(m.variance)) and np.all(np.isnan(m.standard_error))
    np.testing.assert_array_equal(m.mean, [1.0, 2.0])


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="realization axis"):
        Moments.from_samples(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="shapes"):
        Moments.from_samples(np.zeros((2, 3))).merge(Moments.from_samples(np.zeros((2, 4))))
    with pytest.raises(ValueError, match="at least one"):
        merge_all([])
    # Two empty summaries raised ZeroDivisionError in merge; an empty one is now refused outright.
    with pytest.raises(ValueError, match="count"):
        Moments(0, np.zeros(3), np.zeros(3))
