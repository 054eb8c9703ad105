"""ParetoTangentExplorer on the device path: what one exploration step dispatches, and that it moves as before.

Counted on the CPU under ``device_path()`` (the accelerator's branch: no host read to stop MINRES
early) with ``tests/counting.py``; the model is a small MLP trunk with ``k`` linear heads.
"""

import contextlib
import copy
import math

import pytest
import torch
from torch import nn

from tests.counting import Dispatches
from torch_moo import ParetoTangentExplorer
from torch_moo._device import device_path
from torch_moo.engine import objective_roots
from torch_moo.functional import hessian_vector_product, minres
from torch_moo.functional._scale import power_of_two
from torch_moo.functional.krylov import DEVICE_CHECK_EVERY
from torch_moo.functional.mgda import _scale_to_unit_, _unit_gram


class Heads(nn.Module):
    def __init__(self, k: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(16, 1) for _ in range(k))
        self.to(dtype)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        z = self.trunk(x)
        return [head(z).squeeze(-1) for head in self.heads]


def problem(k, dtype=torch.float32, **options):
    model = Heads(k, dtype)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(32, 8, generator=generator, dtype=dtype)
    targets = torch.randn(k, 32, generator=generator, dtype=dtype)

    def closure():
        return torch.stack([(out - y).square().mean() for out, y in zip(model(x), targets)])

    options = {"step_size": 1e-3, **options}
    return model, ParetoTangentExplorer(model.parameters(), num_objectives=k, **options), closure


def counted_step(k, **options):
    """One exploration step under device_path, after two warm-up steps."""
    _, opt, closure = problem(k, **options)
    with device_path():
        for _ in range(2):
            opt.step(closure)
        with Dispatches() as dispatches:
            opt.step(closure)
    return dispatches


def weighted_backward_launches(k):
    """Launches of one plain backward of alpha . f (no graph): the unit of the product's budget."""
    model, _, closure = problem(k)
    losses = closure()
    with Dispatches() as dispatches:
        torch.autograd.grad(losses.new_full((k,), 1 / k) @ losses, list(model.parameters()))
    return dispatches.launches


@pytest.mark.parametrize("k", [2, 4, 16])
def test_host_reads_per_step_are_one_per_check(k):
    # tol=1e-30: MINRES runs to max_iter, every check happens. What the step reads besides MINRES
    # (counted with max_iter=1, whose MINRES reads once): the losses' finiteness under
    # nonfinite="raise", and at most one transfer for the min-norm solve.
    rest = counted_step(k, max_iter=1, tol=1e-30).host_reads - 1
    assert rest <= 2
    for max_iter, check_every in [(50, None), (50, 7), (50, 1)]:
        reads = counted_step(k, max_iter=max_iter, tol=1e-30, check_every=check_every).host_reads
        assert reads <= math.ceil(max_iter / (check_every or DEVICE_CHECK_EVERY)) + rest


@pytest.mark.parametrize("k", [2, 4, 16])
def test_launches_per_minres_iteration_are_within_budget(k):
    # Per iteration: one Hessian-vector product, the operator's scaling (cat, add, mul) and MINRES's
    # own ~60 small ops (counted on a matrix operator). The product is one backward through one
    # gradient graph, about twice a plain backward of alpha . f (measured: 2.2 to 2.4 times at
    # k = 2, 4, 16): budget 3 times. Summing k per-objective gradient graphs cost 5 to 6 times.
    per_iteration = (
        counted_step(k, max_iter=30, tol=1e-30).launches - counted_step(k, max_iter=20, tol=1e-30).launches
    ) / 10
    matrix, rhs = torch.eye(3), torch.ones(3)
    overhead = []
    for max_iter in (20, 30):
        with Dispatches() as dispatches:
            minres(lambda v: matrix @ v, rhs, tol=1e-30, max_iter=max_iter, check_every=100)
        overhead.append(dispatches.launches)
    minres_own = (overhead[1] - overhead[0]) / 10 - 1  # without the matrix product
    assert per_iteration - minres_own <= 3 * weighted_backward_launches(k) + 3


def reference_move(opt, model, closure, damping, max_iter, tol):
    """The step before issue 15: k gradients with their graphs, summed with the weights in Python,
    each product a backward through all k of them (the inner product formed), MINRES checked every
    iteration. The weights come from a copy of ``opt``'s rule (its warm start) on the same Gram matrix."""
    params = list(model.parameters())
    losses = closure()
    rows = [
        torch.autograd.grad(root, params, create_graph=True, materialize_grads=True) for root in objective_roots(losses)
    ]
    matrix = torch.stack([torch.cat([g.detach().reshape(-1) for g in row]) for row in rows])
    exponent = _scale_to_unit_(matrix)  # exact: a power of two, taken back below
    weights = copy.deepcopy(opt.weighting)(_unit_gram([matrix], exponent), losses.detach().float()).to(matrix.dtype)
    matrix = matrix * power_of_two(exponent, matrix)
    weighted = [sum(w * row[j] for w, row in zip(weights, rows)) for j in range(len(params))]
    sizes = [p.numel() for p in params]

    def operator(vector):
        pieces = [piece.view_as(p) for piece, p in zip(vector.split(sizes), params)]
        product = hessian_vector_product(weighted, params, pieces)
        return torch.cat([h.reshape(-1) for h in product]) + damping * vector

    rhs = opt.beta.to(matrix.dtype) @ matrix  # beta as the explorer holds it, in float32
    v = minres(operator, rhs, tol=tol, max_iter=max_iter, check_every=1).solution
    return -torch.where(rhs @ v < 0, -1.0, 1.0) * v / v.norm()


@pytest.mark.parametrize("k", [2, 4])
def test_device_path_step_moves_as_the_summed_gradient_graphs_did(k):
    beta = torch.linspace(1.0, 0.5, k, dtype=torch.float64)
    options = dict(beta=beta, damping=1.0, max_iter=40, tol=1e-30, step_size=1.0)
    model, opt, closure = problem(k, torch.float64, **options)
    before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    with device_path():
        expected = reference_move(opt, model, closure, options["damping"], options["max_iter"], options["tol"])
        opt.step(closure)
    moved = torch.cat([p.detach().reshape(-1) for p in model.parameters()]) - before
    # The two differ in rounding only: the gradient of alpha . f from one backward against the sum of
    # k gradients (3e-17 apart), the products (4e-16 apart, for entries of order 1). Damping 1 makes
    # H + I positive definite (eigenvalues in [0.30, 4.2] at k = 2, [0.53, 3.0] at k = 4), condition
    # number <= 14, and 40 iterations with tol 1e-30 (no early stop, whose iteration could differ)
    # reach rounding level (relative residual 3e-16 to 6e-16): the unit moves differ by 1.5e-16
    # (measured); 1e-12 allows the condition number times that with a wide margin. (At damping
    # 0.1, H + 0.1 I has an eigenvalue 1e-3 from 0: unconverged Lanczos iterates then differ at
    # 1e-3 for a rounding-level change, as they would between two GPUs.)
    torch.testing.assert_close(moved, expected, rtol=0, atol=1e-12)


def test_device_path_moves_exactly_as_the_cpu_path():
    # Checking every 10 iterations instead of every one holds the converged iterate with masks:
    # the same solution bit for bit, whatever the checks (converged well before max_iter here).
    moves = []
    for forced in (False, True):
        model, opt, closure = problem(4, damping=1.0, max_iter=50, tol=1e-5)
        with device_path() if forced else contextlib.nullcontext():
            opt.step(closure)
        moves.append([p.detach().clone() for p in model.parameters()])
        assert opt.tangent_solve.iterations % 10 != 0  # converged between checks (at 9): a call ran past it
    for cpu, device in zip(*moves):
        assert torch.equal(cpu, device)


def test_check_every_is_validated_and_saved_in_the_config():
    model = Heads(2)
    with pytest.raises(ValueError, match=r"check_every must be >= 1, got 0"):
        ParetoTangentExplorer(model.parameters(), num_objectives=2, check_every=0)
    with pytest.raises(TypeError, match=r"check_every must be an int, got float 2.5"):
        ParetoTangentExplorer(model.parameters(), num_objectives=2, check_every=2.5)
    saved = ParetoTangentExplorer(model.parameters(), num_objectives=2, check_every=5).state_dict()
    assert saved["torch_moo"]["config"]["check_every"] == 5
    other = ParetoTangentExplorer(model.parameters(), num_objectives=2)
    with pytest.raises(ValueError, match=r"saved with check_every=5, but this \w+ has check_every=None"):
        other.load_state_dict(saved)
