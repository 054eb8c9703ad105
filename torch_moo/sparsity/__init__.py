"""Sparse training on any optimizer: masks, their layer budgets, schedules and sparse export."""

from torch_moo.sparsity.controller import SparsityController
from torch_moo.sparsity.distribution import layer_counts
from torch_moo.sparsity.export import SparseLinear, to_sparse
from torch_moo.sparsity.masks import drop_and_grow, exploration_bonus, top_count
from torch_moo.sparsity.schedules import CubicSparsity, cosine_fraction

__all__ = [
    "CubicSparsity",
    "SparseLinear",
    "SparsityController",
    "cosine_fraction",
    "drop_and_grow",
    "exploration_bonus",
    "layer_counts",
    "to_sparse",
    "top_count",
]
