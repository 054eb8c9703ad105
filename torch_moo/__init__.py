"""torch_moo: multi-objective, multi-task and sparse training as a drop-in for :mod:`torch.optim`."""

from torch_moo import datasets, functional, objectives, pareto
from torch_moo.base import LossSpaceOptimizer, MultiObjectiveOptimizer
from torch_moo.chebyshev import ChebyshevALM
from torch_moo.minmax import MinMaxWeighting

__all__ = [
    "ChebyshevALM",
    "LossSpaceOptimizer",
    "MinMaxWeighting",
    "MultiObjectiveOptimizer",
    "datasets",
    "functional",
    "objectives",
    "pareto",
]
__version__ = "0.1.0"
