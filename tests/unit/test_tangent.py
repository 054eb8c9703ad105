"""ParetoTangentExplorer and the exploration helpers on problems whose Pareto sets are known."""

import copy
import math

import pytest
import torch

from tests.helpers import assert_resumes
from torch_moo import MultiGradientDescent, ParetoTangentExplorer
from torch_moo.exploration import explore, interpolate_states, local_pareto_set
from torch_moo.functional import min_norm_weights
from torch_moo.pareto import non_dominated
from torch_moo.problems import cylinder, cylinder_point

F64 = torch.float64


def front_error(x):
    f = cylinder(x.detach())
    return abs((f[1] - (1 - f[0] ** 2)).item())


@pytest.mark.parametrize("s, angle", [(0.3, 0.4), (-0.5, 2.0), (0.9, -1.2)])
def test_tangent_is_tangent_to_the_pareto_set_and_matches_a_direct_solve(s, angle):
    x = cylinder_point(s, angle)
    opt = ParetoTangentExplorer([x], num_objectives=2, beta=[1.0, 0.0], damping=1e-4, max_iter=10, tol=1e-12)
    start = x.detach().clone()
    opt.step(lambda: cylinder(x))
    # The direct solve of (sum_i alpha_i Hess f_i + damping I) v = J^T beta, with the full Hessian.
    jacobian = torch.autograd.functional.jacobian(cylinder, start)
    alpha, _ = min_norm_weights(jacobian @ jacobian.T)
    hessian = torch.autograd.functional.hessian(lambda y: alpha @ cylinder(y), start)
    direct = torch.linalg.solve(
        hessian + 1e-4 * torch.eye(3, dtype=F64), jacobian.T @ torch.tensor([1.0, 0.0], dtype=F64)
    )
    # Three unknowns: MINRES is exact after three Hessian-vector products up to rounding of the
    # float64 Lanczos recurrence (about 1e-14 relative); 1e-9 leaves room for the conditioning.
    torch.testing.assert_close(opt.tangent_solve.solution, direct, rtol=1e-9, atol=1e-12)
    # A Pareto-stationary start: sum alpha_i grad f_i = 0 up to the rounding of pi in the point
    # (gradients of norm ~10, so ||d||^2 ~ 1e-16).
    assert opt.stationarity.item() < 1e-12
    move = x.detach() - start
    radial = torch.tensor([0.0, math.cos(angle), math.sin(angle)], dtype=F64)
    # The set's normal at the point is radial. The damping tilts the move off the set by an angle
    # proportional to it: about 1e-3 at damping 1e-2 (measured), so about 1e-5 here.
    assert abs(move @ radial) / move.norm() < 1e-4
    assert math.isclose(move.norm().item(), 0.1, rel_tol=1e-12)
    assert cylinder(x.detach())[0] < cylinder(start)[0]  # beta = e_1 improves f_1


@pytest.mark.parametrize("beta, improved", [([1.0, 0.0], 0), ([0.0, 1.0], 1)])
def test_exploration_walks_along_the_front(beta, improved):
    x = cylinder_point(0.2, 0.7)
    opt = ParetoTangentExplorer([x], num_objectives=2, beta=beta, step_size=0.05, damping=1e-3, max_iter=10)
    values = [cylinder(x.detach())]
    for _ in range(10):
        opt.step(lambda: cylinder(x))
        values.append(cylinder(x.detach()))
        # Moving along tangents leaves the set at second order: r^2 drifts by about 2e-5 per step
        # of 0.05, and the front's g - 1 = 9 (1 + cos r^2) / 2 grows as the square of that drift.
        assert front_error(x) < 1e-6
    values = torch.stack(values)
    assert (values[1:, improved] < values[:-1, improved]).all()  # the chosen objective improves every step
    assert (values[1:, 1 - improved] > values[:-1, 1 - improved]).all()  # at the other's expense
    assert non_dominated(values).all()  # every explored point is on the front


def test_correction_steps_pull_the_iterate_back_to_the_pareto_set():
    # Long steps with strong damping leave the cylinder (r^2 - pi = 0.038 after 5 steps); MGDA
    # steps pull back, slowly, since the min-norm direction shrinks near the set.
    drift, stationarity = {}, {}
    for corrections in (0, 5):
        x = cylinder_point(0.0, 0.3)
        opt = ParetoTangentExplorer([x], num_objectives=2, step_size=0.2, damping=0.1, corrections=corrections, lr=2e-2)
        for _ in range(5):
            opt.step(lambda x=x: cylinder(x))
        drift[corrections], stationarity[corrections] = abs((x[1] ** 2 + x[2] ** 2).item() - math.pi), opt.stationarity
    assert drift[5] < 0.6 * drift[0] and stationarity[5] < stationarity[0]


def test_convex_quadratics_move_exactly_along_the_segment():
    # f_i = ||x - p_i||^2: H = 2 I, so v is parallel to J^T beta and stays on the segment p1-p2.
    p1, p2 = torch.tensor([0.0, 0.0, 0.0], dtype=F64), torch.tensor([2.0, 1.0, -1.0], dtype=F64)
    x = (0.5 * (p1 + p2)).requires_grad_()
    opt = ParetoTangentExplorer([x], num_objectives=2, beta=[0.0, 1.0], step_size=0.1, damping=0.0)
    for _ in range(3):
        opt.step(lambda: torch.stack([(x - p1).square().sum(), (x - p2).square().sum()]))
    unit = (p2 - p1) / (p2 - p1).norm()
    torch.testing.assert_close(x.detach(), 0.5 * (p1 + p2) + 0.3 * unit, rtol=0, atol=1e-12)


def test_linear_objectives_use_the_damping_alone():
    # H = 0: v = J^T beta / damping, so the move is along -grad(beta^T f).
    x = torch.zeros(2, requires_grad=True)
    a = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    opt = ParetoTangentExplorer([x], num_objectives=2, beta=[0.3, 0.7], step_size=0.5)
    opt.step(lambda: a @ x)
    gradient = torch.tensor([0.3, 0.7]) @ a
    torch.testing.assert_close(x.detach(), -0.5 * gradient / gradient.norm())


def test_step_after_backward_is_an_mgda_step():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    twin = copy.deepcopy(model)
    x = torch.randn(16, 3)
    explorer = ParetoTangentExplorer(model.parameters(), num_objectives=2, lr=0.1)
    mgda = MultiGradientDescent(twin.parameters(), num_objectives=2, base=torch.optim.SGD, lr=0.1)
    for opt, net in ((explorer, model), (mgda, twin)):
        for _ in range(3):
            opt.zero_grad()
            opt.backward(net(x).square().mean(0))
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_step_hooks_run_once_per_exploration_step_with_corrections():
    x = cylinder_point(0.1, 0.0)
    opt = ParetoTangentExplorer([x], num_objectives=2, corrections=2, lr=1e-3)
    calls = []
    opt.register_step_post_hook(lambda *_: calls.append(1))
    evaluations = []

    def closure():
        evaluations.append(1)
        return cylinder(x)

    returned = opt.step(closure)
    assert len(calls) == 1 and len(evaluations) == 3  # the tangent, then one per correction
    assert returned.shape == (2,) and not returned.requires_grad


def test_exploration_resumes_bit_for_bit():
    # its refused settings, closures and state dicts: tests/unit/test_error_tables.py
    def build():
        point = torch.nn.ParameterList([cylinder_point(0.1, 0.0)])
        return point, ParetoTangentExplorer(point.parameters(), num_objectives=2, damping=0.05, corrections=1)

    def run(objects, start, stop):
        point, opt = objects
        for _ in range(start, stop):
            opt.step(lambda: cylinder(point[0]))

    assert_resumes(build, run, steps=6)


def quadratic_losses(model):
    w = model.weight.reshape(-1)
    return torch.stack([w.square().sum(), (w - 1).square().sum()])


def test_explore_returns_every_start_and_point_and_leaves_the_starts_alone():
    starts = []
    for value in (0.3, 0.6):
        model = torch.nn.Linear(2, 1, bias=False).double()
        with torch.no_grad():
            model.weight.fill_(value)
        starts.append(model)
    before = [m.weight.detach().clone() for m in starts]
    points = explore(starts, quadratic_losses, steps=3, step_size=0.05, damping=0.0)
    assert len(points) == 2 * (1 + 2 * 3)
    assert [(p.start, p.direction, p.step) for p in points[:4]] == [(0, -1, 0), (0, 0, 1), (0, 0, 2), (0, 0, 3)]
    for model, weight in zip(starts, before):
        assert torch.equal(model.weight, weight)
    values = torch.stack([p.values for p in points])
    assert non_dominated(values).all()  # the whole Pareto set [0, 1]^... segment: nothing dominated
    # Direction e_1 lowers f_1 by steps of 0.05 along the diagonal (the points stay on it).
    first = [p.state["weight"] for p in points if p.start == 0 and p.direction == 0]
    torch.testing.assert_close(first[-1], torch.full((1, 2), 0.3 - 3 * 0.05 / math.sqrt(2), dtype=F64))


def test_explore_calls_the_callback_with_each_point_as_it_is_reached():
    model = torch.nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(0.5)
    evaluations, seen = [], []  # loss evaluations so far; (point, evaluations when the callback ran)

    def losses(model):
        evaluations.append(1)
        return quadratic_losses(model)

    def callback(point):
        seen.append((point, len(evaluations)))

    points = explore(model, losses, steps=2, step_size=0.1, damping=0.0, callback=callback)
    assert [point for point, _ in seen] == points  # every point, once, in the returned order
    counts = [count for _, count in seen]
    assert counts[0] == 1 and counts == sorted(set(counts))  # called as each point is reached, not at the end
    assert [(p.start, p.direction, p.step) for p in points] == [(0, -1, 0), (0, 0, 1), (0, 0, 2), (0, 1, 1), (0, 1, 2)]
    assert all(p.tangent_iterations is not None for p in points[1:])  # each step's solve is visible to it


def test_local_pareto_set_interpolates_a_point_and_its_neighbours():
    model = torch.nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(0.5)
    points = explore(model, quadratic_losses, steps=1, step_size=0.1, damping=0.0)
    center, neighbours = points[0].state, [p.state for p in points[1:]]
    weights, values, states = local_pareto_set(model, quadratic_losses, center, neighbours, divisions=4)
    assert weights.shape == (15, 3) and values.shape == (15, 2) and len(states) == 15
    assert non_dominated(values).all()  # convex combinations of points on a segment stay on it
    torch.testing.assert_close(states[0]["weight"], neighbours[1]["weight"])  # lattice row (0, 0, 1)


def test_interpolate_states_keeps_integer_buffers_and_checks_input():
    a = {"w": torch.tensor([1.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0]), "n": torch.tensor(7)}
    combined = interpolate_states([a, b], [0.5, 0.5])
    assert combined["w"].item() == 2.0 and combined["n"].item() == 3
    with pytest.raises(ValueError, match="one entry per state"):
        interpolate_states([a, b], [1.0])
    with pytest.raises(ValueError, match=r"states must have the same keys \(state dicts of one architecture\)"):
        interpolate_states([a, {"w": torch.tensor([1.0])}], [0.5, 0.5])


def test_non_finite_losses_skip_the_exploration_step_and_move_nothing():
    # under nonfinite="raise" they are an error: tests/unit/test_error_tables.py
    x = cylinder_point(0.1, 0.0)
    opt = ParetoTangentExplorer([x], num_objectives=2, nonfinite="skip")
    before = x.detach().clone()
    opt.step(lambda: cylinder(x) * torch.tensor([1.0, float("nan")], dtype=F64))
    assert opt.skipped
    assert torch.equal(x.detach(), before)
    opt.step(lambda: cylinder(x))  # the next finite step explores as usual
    assert not opt.skipped and not torch.equal(x.detach(), before)


def test_explored_points_carry_their_solve_statistics():
    model = torch.nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(0.5)
    points = explore(model, quadratic_losses, steps=2, step_size=0.05, damping=0.0)
    assert points[0].tangent_iterations is None and points[0].tangent_residual is None  # the start
    for point in points[1:]:
        # H = 2 I on a quadratic: MINRES is exact after one iteration (rounding only).
        assert point.tangent_iterations == 1 and point.tangent_residual < 1e-12
