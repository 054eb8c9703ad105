"""The simplex projection against its definition: KKT conditions of min ||w - v||^2 on the simplex."""

import hypothesis.strategies as st
import torch
from hypothesis import given

from torch_moo.functional import project_simplex, simplex_threshold

vectors = st.integers(1, 12).flatmap(
    lambda k: st.lists(st.floats(-50, 50, allow_nan=False, width=64), min_size=k, max_size=k)
)
# float64 throughout: every check is a sum of at most 12 terms of size <= 50, so 1e-9 absolute
# leaves five orders of magnitude above double rounding.
TOL = 1e-9


@given(vectors)
def test_projection_lies_on_the_simplex(values):
    w = project_simplex(torch.tensor(values, dtype=torch.float64))
    assert (w >= 0).all()
    assert abs(w.sum().item() - 1) < TOL


@given(vectors)
def test_projection_satisfies_kkt(values):
    # w = proj(v)  <=>  v - w = tau on the support of w and v <= tau off it.
    v = torch.tensor(values, dtype=torch.float64)
    w = project_simplex(v)
    tau = simplex_threshold(v).item()
    support = w > 0
    assert support.any()
    assert torch.allclose((v - w)[support], torch.full_like(v[support], tau), atol=TOL, rtol=0)
    assert (v[~support] <= tau + TOL).all()


@given(vectors, st.integers(0, 2**31 - 1))
def test_projection_is_closest_point(values, seed):
    torch.manual_seed(seed)
    v = torch.tensor(values, dtype=torch.float64)
    w = project_simplex(v)
    others = torch.distributions.Dirichlet(torch.ones(len(values), dtype=torch.float64)).sample((64,))
    assert ((others - v).norm(dim=-1) >= (w - v).norm() - TOL).all()


@given(vectors)
def test_projection_is_idempotent(values):
    w = project_simplex(torch.tensor(values, dtype=torch.float64))
    assert torch.allclose(project_simplex(w), w, atol=TOL, rtol=0)


@given(vectors, st.floats(-20, 20, allow_nan=False))
def test_projection_ignores_a_common_shift(values, shift):
    v = torch.tensor(values, dtype=torch.float64)
    assert torch.allclose(project_simplex(v + shift), project_simplex(v), atol=TOL, rtol=0)


def test_projection_works_on_batches():
    v = torch.randn(5, 3, 7, dtype=torch.float64)
    batched = project_simplex(v)
    assert torch.allclose(batched, torch.stack([project_simplex(row) for row in v.reshape(-1, 7)]).reshape(5, 3, 7))


def test_non_finite_input_gives_nan_instead_of_an_out_of_bounds_gather():
    assert torch.isnan(project_simplex(torch.tensor([float("nan"), 1.0]))).all()
    assert torch.isnan(project_simplex(torch.tensor([float("inf"), 1.0]))).any()
