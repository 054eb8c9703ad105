"""Hypothesis strategies shared by the property tests."""

from __future__ import annotations

from hypothesis import strategies as st

finite = st.floats(-10, 10, allow_nan=False, width=64)
"""A float64 loss value or multiplier of moderate size."""


def preferences(m: int, width: int = 64) -> st.SearchStrategy[list[float]]:
    """Chebyshev preferences: ``m`` entries in [0, 1], not all (nearly) zero."""
    return st.lists(st.floats(0, 1, width=width), min_size=m, max_size=m).filter(lambda k: sum(k) > 1e-3)
