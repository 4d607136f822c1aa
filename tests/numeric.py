"""Float comparisons with tolerances relative to the values' magnitude.

Float error grows with the size of the numbers a computation handles, and CPUs differ (Intel and AMD
BLAS round differently), so a fixed absolute tolerance that passes on values near 1 fails on values
near 30. Both helpers scale the tolerance by the largest magnitude of the expected values (at least 1,
so values in [0, 1] such as probabilities keep the tolerance as given).
"""

from __future__ import annotations

import numpy as np
import pytest


def magnitude(values) -> float:
    """max(1, largest finite |value|)."""
    a = np.abs(np.asarray(values, dtype=np.float64))
    finite = a[np.isfinite(a)]
    return max(1.0, float(finite.max())) if finite.size else 1.0


def assert_close(actual, desired, tol: float, **kwargs) -> None:
    """|actual - desired| <= tol * max(1, max |desired|) everywhere (plus tol relative per element)."""
    np.testing.assert_allclose(actual, desired, rtol=tol, atol=tol * magnitude(desired), **kwargs)


def approx(desired, tol: float):
    """pytest.approx with the same rule: tolerance tol * max(1, |desired|)."""
    return pytest.approx(desired, rel=tol, abs=tol * magnitude(desired))
