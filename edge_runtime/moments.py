"""Exact mean and standard deviation of feature columns, whatever order the rows come in
(`FeatureEncoder.fit`, and `prepare` block by block).

The encoder's normalisation is learned on the training split's raw feature rows. The
in-memory path has them all at once; `prepare` sees them block by block, in an order that
depends on the engine (users by hash bucket locally, by partition in Spark). A float sum
depends on the order of its terms, so each value is cut to a whole number of 2**-40 (for
the mean; of 2**-30 for the variance) and summed as int64 in chunks small enough never to
overflow, the chunk sums then added as Python integers. The sums are exact: mean and variance
are rounded once, at the end, and any order of rows and any split into batches give the same
bits, in every engine.

Raw features are bounded: every one is a 0/1 flag, a sine or cosine, or a log1p of a finite
float (at most 709.8), so |x| < 2**10 always holds; the check is there for a future feature.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from edge_runtime.errors import ConfigError

LIMIT = 2.0 ** 10
MEAN_BITS = 40  # |x * 2**40| < 2**50: 4096 of them sum below 2**62
SQUARE_BITS = 30  # |x * 2**30| < 2**40, squared through 15-bit halves (see `add`)
HALF_BITS = 15
CHUNK = 1 << 12  # rows summed in int64 at a time: every term is < 2**50, so sums stay < 2**62
ROWS_AT_ONCE = 1 << 16


def _exact_sum(values: np.ndarray, chunk: int) -> list[int]:
    """Column sums of int64 ``values`` as Python integers, int64 sums of ``chunk`` rows at a time."""
    n, width = values.shape
    pad = (-n) % chunk
    if pad:
        values = np.concatenate([values, np.zeros((pad, width), np.int64)])
    partial = values.reshape(-1, chunk, width).sum(axis=1)  # each < 2**62: exact
    return [sum(column) for column in partial.T.tolist()]


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
        self._sum = [0] * n_columns      # of x * 2**MEAN_BITS
        self._coarse = [0] * n_columns   # of x * 2**SQUARE_BITS
        self._squares = [0] * n_columns  # of (x * 2**SQUARE_BITS)**2

    def add(self, rows: np.ndarray) -> None:
        """Add raw rows (N, n_columns).

        Raises:
            ConfigError: a value that is not finite, or of magnitude 2**10 or more.
        """
        rows = np.asarray(rows, np.float64).reshape(-1, self.n_columns)
        if len(rows) == 0:
            return
        if not np.isfinite(rows).all() or (np.abs(rows) >= LIMIT).any():
            raise ConfigError(f"raw feature values must be finite and below {LIMIT:g} in magnitude "
                              f"to be normalised exactly; max |x| = {np.abs(rows).max()}")
        # Truncated toward zero: any fixed rule makes the sums independent of the order.
        for lo in range(0, len(rows), ROWS_AT_ONCE):  # bounded temporaries: 8 int64 copies
            self._add_exactly(rows[lo:lo + ROWS_AT_ONCE])
        self.rows += len(rows)

    def _add_exactly(self, rows: np.ndarray) -> None:
        fine = (rows * float(1 << MEAN_BITS)).astype(np.int64)
        coarse = (rows * float(1 << SQUARE_BITS)).astype(np.int64)
        # coarse = high * 2**15 + low with 0 <= low < 2**15, so coarse**2 is the sum of three
        # terms below 2**50 each: high**2 * 2**30 + 2 * high * low * 2**15 + low**2.
        high, low = coarse >> HALF_BITS, coarse & ((1 << HALF_BITS) - 1)
        sums = [_exact_sum(v, CHUNK) for v in (fine, coarse, high * high, high * low, low * low)]
        for c in range(self.n_columns):
            self._sum[c] += sums[0][c]
            self._coarse[c] += sums[1][c]
            self._squares[c] += ((sums[2][c] << (2 * HALF_BITS)) + (sums[3][c] << (HALF_BITS + 1))
                                 + sums[4][c])

    def merge(self, other: ExactMoments) -> ExactMoments:
        """Add another accumulator's sums (partial moments from another worker)."""
        self.rows += other.rows
        for mine, theirs in ((self._sum, other._sum), (self._coarse, other._coarse),
                             (self._squares, other._squares)):
            for c in range(self.n_columns):
                mine[c] += theirs[c]
        return self

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and (population) standard deviation per column, each rounded once.

        Raises:
            ConfigError: no rows were added.
        """
        n = self.rows
        if n == 0:
            raise ConfigError("no training rows to learn the feature normalisation from")
        mean = [float(Fraction(s, n << MEAN_BITS)) for s in self._sum]
        std = [math.sqrt(float(Fraction(n * q - s * s, (n * n) << (2 * SQUARE_BITS))))
               for s, q in zip(self._coarse, self._squares, strict=True)]
        return np.array(mean, np.float64), np.array(std, np.float64)
