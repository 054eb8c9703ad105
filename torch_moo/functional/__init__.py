"""Stateless math behind the optimizers: pure functions of tensors, usable on their own."""

from torch_moo.functional.chebyshev import (
    chebyshev_constraints,
    chebyshev_objective_weights,
    chebyshev_terms,
    multiplier_estimate,
    optimal_level,
    phr_penalty,
)
from torch_moo.functional.curvature import hessian_vector_product
from torch_moo.functional.krylov import MinresResult, minres
from torch_moo.functional.mgda import mgda_weights, normalized_gram
from torch_moo.functional.min_norm import MinNormSolution, min_norm_solve, min_norm_weights
from torch_moo.functional.simplex import project_simplex, simplex_threshold

__all__ = [
    "MinresResult",
    "chebyshev_constraints",
    "chebyshev_objective_weights",
    "chebyshev_terms",
    "hessian_vector_product",
    "mgda_weights",
    "MinNormSolution",
    "min_norm_solve",
    "min_norm_weights",
    "minres",
    "normalized_gram",
    "multiplier_estimate",
    "optimal_level",
    "phr_penalty",
    "project_simplex",
    "simplex_threshold",
]
