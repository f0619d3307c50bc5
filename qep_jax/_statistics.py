"""Running mean, variance and standard error over realizations, merged chunk by chunk.

Each chunk of realizations is summarised by ``(count, mean, m2)`` with ``m2`` the sum of squared
deviations from the chunk mean (computed with two passes, so no cancellation inside a chunk).
Chunks are combined with the pairwise update of Chan, Golub & LeVeque (1979),
``m2 = m2_a + m2_b + delta^2 n_a n_b / n``, which stays accurate when the mean is large
compared with the spread, unlike accumulating ``sum x`` and ``sum x^2``. The rounding of each
chunk mean still enters ``delta^2``: the merged variance has a relative error ~``eps |mean| / std``
(7.7e-8 at mean / std = 1e9 over random splits, against 3e-14 for NumPy's two passes over all
samples), irrelevant at the O(1) scales of entropies and energies here.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ._open_system import is_int


@dataclasses.dataclass(frozen=True)
class Moments:
    """Sample statistics of ``count`` realizations of an array-valued quantity.

    Fields:
        count: number of realizations ``n``.
        mean: ``(...)`` ``sum_i x_i / n``.
        m2: ``(...)`` ``sum_i (x_i - mean)^2``.
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray

    def __post_init__(self):
        # merge divides by the total count: two empty Moments raised ZeroDivisionError.
        if not is_int(self.count) or self.count < 1:
            raise ValueError(f"Moments.count={self.count!r} must be an int >= 1 (realizations summarised).")

    @classmethod
    def from_samples(cls, samples) -> "Moments":
        """Statistics of ``samples`` of shape ``(n, ...)`` (realizations on axis 0)."""
        x = np.asarray(samples, dtype=np.float64)
        if x.ndim < 1 or x.shape[0] < 1:
            raise ValueError(f"samples must have a leading realization axis of length >= 1, got {x.shape}.")
        mean = x.mean(axis=0)
        return cls(int(x.shape[0]), mean, np.sum((x - mean) ** 2, axis=0))

    def merge(self, other: "Moments") -> "Moments":
        """Statistics of the union of both sets of realizations (Chan et al. pairwise update)."""
        if self.mean.shape != other.mean.shape:
            raise ValueError(f"cannot merge statistics of shapes {self.mean.shape} and {other.mean.shape}.")
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return Moments(n, mean, m2)

    @property
    def variance(self) -> np.ndarray:
        """``(...)`` unbiased sample variance ``m2 / (n - 1)``; NaN for a single realization."""
        if self.count < 2:
            return np.full_like(self.mean, np.nan)
        return self.m2 / (self.count - 1)

    @property
    def standard_error(self) -> np.ndarray:
        """``(...)`` standard error of the mean ``sqrt(variance / n)``."""
        return np.sqrt(self.variance / self.count)


def merge_all(parts) -> Moments:
    """Left fold of :meth:`Moments.merge` over ``parts`` in the given order (order fixes rounding)."""
    parts = list(parts)
    if not parts:
        raise ValueError("merge_all needs at least one Moments.")
    total = parts[0]
    for part in parts[1:]:
        total = total.merge(part)
    return total
