"""The doctests' namespace: every docstring example may use ``torch`` without importing it."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _doctest_torch(doctest_namespace: dict) -> None:
    doctest_namespace["torch"] = torch
