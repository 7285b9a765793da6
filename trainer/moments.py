"""Exact mean and standard deviation of feature columns, whatever order the rows come in.

The encoder's normalisation is learned on the training split's raw feature rows. The
in-memory path has them all at once; `prepare` sees them block by block, in an order that
depends on the engine (users by hash bucket locally, by partition in Spark). A float sum
depends on the order of its terms, so each value is taken as an integer number of
2**-FRACTION_BITS (exact for |x| < 2**LIMIT_BITS, far above any raw feature: the largest is a
log1p) and summed in integers, split into 21-bit limbs so that no int64 sum overflows. The
sums, combined as Python integers, are exact: mean and variance are rounded once, at the
end. Any order of rows and any split into batches give the same bits, in every engine.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from edge_runtime.errors import ConfigError

FRACTION_BITS = 40
LIMIT_BITS = 21  # |x| < 2**21: x * 2**40 < 2**61 fits an int64 with its sign
LIMB_BITS = 21
LIMB = 1 << LIMB_BITS
# Rows summed per int64 pass: a product of two limbs is < 2**42, times 2**20 rows < 2**62.
ROWS_PER_PASS = 1 << 20


class ExactMoments:
    """Running exact sums of a (rows, columns) float array; see the module docstring.

    Example:
        >>> m = ExactMoments(2); m.add(np.array([[1.0, 2.0], [3.0, 4.0]]))
        >>> m.mean_std()
        (array([2., 3.]), array([1., 1.]))
    """

    def __init__(self, n_columns: int) -> None:
        self.n_columns = n_columns
        self.rows = 0
        self._sum = [0] * n_columns
        self._squares = [0] * n_columns

    def add(self, rows: np.ndarray) -> None:
        """Add raw rows (N, n_columns).

        Raises:
            ConfigError: a value that is not finite, or of magnitude 2**21 or more.
        """
        rows = np.asarray(rows, np.float64).reshape(-1, self.n_columns)
        if not np.isfinite(rows).all() or (np.abs(rows) >= 2.0 ** LIMIT_BITS).any():
            raise ConfigError(f"feature values must be finite and below 2**{LIMIT_BITS} in "
                              f"magnitude to be normalised exactly; max |x| = {np.abs(rows).max()}")
        for lo in range(0, len(rows), ROWS_PER_PASS):
            self._add_pass(rows[lo:lo + ROWS_PER_PASS])
        self.rows += len(rows)

    def _add_pass(self, rows: np.ndarray) -> None:
        q = np.rint(np.ldexp(rows, FRACTION_BITS)).astype(np.int64)
        sign = np.sign(q)
        mag = np.abs(q)
        limbs = [mag & (LIMB - 1), (mag >> LIMB_BITS) & (LIMB - 1), mag >> (2 * LIMB_BITS)]
        for c in range(self.n_columns):
            a = [limb[:, c] for limb in limbs]
            s = sign[:, c]
            self._sum[c] += sum(int((s * a[i]).sum()) << (LIMB_BITS * i) for i in range(3))
            self._squares[c] += sum((int((a[i] * a[j]).sum()) << (LIMB_BITS * (i + j))) * (1 if i == j else 2)
                                    for i in range(3) for j in range(i, 3))

    def merge(self, other: ExactMoments) -> ExactMoments:
        """Add another accumulator's sums (partial moments from another worker)."""
        self.rows += other.rows
        self._sum = [a + b for a, b in zip(self._sum, other._sum, strict=True)]
        self._squares = [a + b for a, b in zip(self._squares, other._squares, strict=True)]
        return self

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and (population) standard deviation per column, each rounded once.

        Raises:
            ConfigError: no rows were added.
        """
        n = self.rows
        if n == 0:
            raise ConfigError("no training rows to learn the feature normalisation from")
        unit = 1 << FRACTION_BITS
        mean = [float(Fraction(s, n * unit)) for s in self._sum]
        std = [math.sqrt(float(Fraction(n * q - s * s, n * n * unit * unit)))
               for s, q in zip(self._sum, self._squares, strict=True)]
        return np.array(mean, np.float64), np.array(std, np.float64)
