"""torch_moo: multi-objective, multi-task and sparse training as a drop-in for :mod:`torch.optim`."""

from torch_moo import (
    continuation,
    datasets,
    engine,
    exploration,
    functional,
    objectives,
    pareto,
    problems,
    sparsity,
    weightings,
)
from torch_moo.base import MultiObjectiveOptimizer, WeightedLossDescent
from torch_moo.chebyshev import ChebyshevALM
from torch_moo.descent import JacobianDescent
from torch_moo.fixed import FixedWeighting
from torch_moo.mgda import MultiGradientDescent
from torch_moo.minmax import MinMaxWeighting
from torch_moo.sparsity import SparsityController
from torch_moo.tangent import ParetoTangentExplorer

__all__ = [
    "ChebyshevALM",
    "FixedWeighting",
    "JacobianDescent",
    "MinMaxWeighting",
    "MultiGradientDescent",
    "MultiObjectiveOptimizer",
    "ParetoTangentExplorer",
    "SparsityController",
    "WeightedLossDescent",
    "continuation",
    "datasets",
    "engine",
    "exploration",
    "functional",
    "objectives",
    "pareto",
    "problems",
    "sparsity",
    "weightings",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``torch_moo.checkpoint`` on first use: it imports torch.distributed.checkpoint (about a second)."""
    if name == "checkpoint":
        import importlib

        return importlib.import_module("torch_moo.checkpoint")
    raise AttributeError(f"module 'torch_moo' has no attribute {name!r}")
