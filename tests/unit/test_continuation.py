"""Predictor-corrector continuation (torch_moo.continuation) on problems with a known front."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.counting import Dispatches
from torch_moo.continuation import continue_front, trace_path
from torch_moo.problems import cylinder, cylinder_point, two_task_regression


class Point(torch.nn.Module):
    def __init__(self, x: torch.Tensor) -> None:
        super().__init__()
        self.x = torch.nn.Parameter(x.detach().clone())


def cylinder_losses(model: Point) -> torch.Tensor:
    return cylinder(model.x)


def test_cylinder_paths_stay_on_the_front_and_reach_both_ends() -> None:
    points = continue_front(
        Point(cylinder_point(0.0, 0.3)), cylinder_losses, budget=2000, tol=1e-8, step_size=0.2, damping=1e-8
    )
    accepted = [p for p in points if p.accepted]
    values = torch.stack([p.values for p in accepted])
    # float64, relative KKT residual <= 1e-8 after Newton: the distance to f2 = 1 - f1^2 is ~1e-9, under 1e-6
    assert ((values[:, 1] - (1 - values[:, 0] ** 2)).abs() < 1e-6).all()
    for p in accepted:  # on the cylinder x1^2 + x2^2 = pi too (the Pareto set, not only the front)
        x = p.state["x"]
        assert abs(float(x[1] ** 2 + x[2] ** 2) - math.pi) < 1e-6
    # both ends of the front (f1 = 0 and f1 = 1) from the one middle start (f1 = 0.5)
    assert float(values[:, 0].min()) < 1e-3 and float(values[:, 0].max()) > 1 - 1e-3
    assert {p.direction for p in accepted} == {-1, 0, 1}
    assert all(p.cost > 0 and p.kkt_residual >= 0 for p in points[1:])
    assert sum(p.cost for p in points) <= 2000


def test_rejected_points_carry_no_state_and_shrink_the_step() -> None:
    points = continue_front(
        Point(cylinder_point(0.0, 0.3)), cylinder_losses, budget=2000, tol=1e-8, step_size=0.2, damping=1e-8
    )
    rejected = [i for i, p in enumerate(points) if not p.accepted]
    assert rejected, "the f1 = 1 end bends back: some steps must be rejected there"
    for i in rejected:
        assert points[i].state is None
        if i + 1 < len(points) and points[i + 1].direction == points[i].direction:
            assert points[i + 1].step_size == pytest.approx(points[i].step_size / 2)


def test_concave_regression_front_is_traced_through_its_middle() -> None:
    problem = two_task_regression(separation=3.0)  # D = 3 sigma: concave in the middle
    start = problem.optima.mean(dim=0)
    points = continue_front(
        Point(start), lambda m: problem.losses(m.x), budget=3000, tol=1e-8, step_size=0.3, damping=1e-8
    )
    values = torch.stack([p.values for p in points if p.accepted])
    # the true front is 1 - exp(-(t D)^2), 1 - exp(-((1 - t) D)^2): recover t from f1, compare f2
    distance = 3.0
    t = torch.sqrt(-torch.log1p(-values[:, 0].clamp(max=1 - 1e-15))) / distance
    expected = 1 - torch.exp(-(((1 - t) * distance) ** 2))
    assert ((values[:, 1] - expected).abs() < 1e-6).all()  # float64 Newton to residual 1e-8
    assert float(values[:, 0].min()) < 1e-3 and float(values[:, 1].min()) < 1e-3  # both ends


def test_budget_is_respected_and_split_between_starts() -> None:
    starts = [Point(cylinder_point(s, 0.1)) for s in (-0.5, 0.5)]
    points = continue_front(starts, cylinder_losses, budget=200, tol=1e-8, step_size=0.1, damping=1e-8)
    assert {p.start for p in points} == {0, 1}
    # a path stops before a step that its last step's cost says would pass its share: within one step
    assert sum(p.cost for p in points) <= 200 + max(p.cost for p in points)


@settings(max_examples=10, deadline=None)
@given(s=st.floats(-1.0, 1.0), angle=st.floats(0.0, 2 * math.pi))
def test_any_start_on_the_cylinder_is_kept_on_the_front(s: float, angle: float) -> None:
    model = Point(cylinder_point(s, angle))
    points = trace_path(model, cylinder_losses, 0, budget=150, tol=1e-8, step_size=0.1, damping=1e-8)
    for p in points:
        if p.accepted:
            # tolerance as above: Newton to a 1e-8 residual in float64
            assert abs(float(p.values[1] - (1 - p.values[0] ** 2))) < 1e-6
            assert float(p.values[0]) < sin_half(s) + 1e-12  # trading toward f1: it went down


def sin_half(s: float) -> float:
    return math.sin(s) / 2 + 0.5


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"budget": 0}, ValueError, "budget must be >= 1"),
        ({"budget": 10, "tol": 0.0}, ValueError, "tol must be > 0"),
        ({"budget": 10, "start_corrections": -1}, ValueError, "start_corrections must be >= 0"),
    ],
)
def test_bad_arguments(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        continue_front(Point(cylinder_point(0.0, 0.0)), cylinder_losses, **kwargs)


def test_bad_models_and_objective() -> None:
    with pytest.raises(TypeError, match="models must be an nn.Module"):
        continue_front([], cylinder_losses, budget=10)
    with pytest.raises(ValueError, match="objective must be >= 0, got -1"):
        trace_path(Point(cylinder_point(0.0, 0.0)), cylinder_losses, -1, budget=10, tol=1e-6)
    with pytest.raises(ValueError, match="max_step must be >= step_size"):
        trace_path(Point(cylinder_point(0.0, 0.0)), cylinder_losses, 0, budget=10, tol=1e-6, max_step=0.01)
    with pytest.raises(ValueError, match="objective must be an objective index below 2, got 2"):
        trace_path(Point(cylinder_point(0.0, 0.0)), cylinder_losses, 2, budget=10, tol=1e-6)


def test_mgda_corrector_keeps_the_cylinder_on_the_front() -> None:
    points = continue_front(
        Point(cylinder_point(0.0, 0.3)),
        cylinder_losses,
        budget=1000,
        tol=1e-8,
        step_size=0.2,
        damping=1e-8,
        corrector="mgda",
        corrections=10,
    )
    values = torch.stack([p.values for p in points if p.accepted])
    assert len(values) > 5
    # MGDA steps scaled by the exact curvature along d: accepted only at residual <= 1e-8, as for Newton
    assert ((values[:, 1] - (1 - values[:, 0] ** 2)).abs() < 1e-6).all()
    with pytest.raises(ValueError, match="corrector must be one of 'newton', 'mgda'; got 'sgd'"):
        trace_path(Point(cylinder_point(0.0, 0.0)), cylinder_losses, 0, budget=10, tol=1e-6, corrector="sgd")


def test_extend_traces_outward_from_the_extreme_starts() -> None:
    starts = [Point(cylinder_point(s, 0.1)) for s in (-0.5, 0.0, 0.5)]  # f1 = 0.26, 0.5, 0.74
    points = continue_front(
        starts, cylinder_losses, budget=1500, tol=1e-8, step_size=0.2, damping=1e-8, directions="extend"
    )
    paths = {(p.start, p.direction) for p in points if p.direction >= 0}
    assert paths == {(0, 0), (2, 1)}  # toward f1 from the start where f1 is smallest, toward f2 likewise
    values = torch.stack([p.values for p in points if p.accepted])
    assert ((values[:, 1] - (1 - values[:, 0] ** 2)).abs() < 1e-6).all()  # as in the first test
    assert float(values[:, 0].min()) < 1e-3 and float(values[:, 0].max()) > 1 - 1e-3


class TwoTargets(torch.nn.Module):
    """A linear map with two conflicting regression targets: a real trade-off, never stationary at init."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(6, 1)
        self.inputs = torch.randn(32, 6)
        self.targets = torch.stack([self.inputs[:, 0] + 1.0, -self.inputs[:, 0] + self.inputs[:, 1]], dim=1)

    def losses(self) -> torch.Tensor:
        prediction = self.linear(self.inputs)
        return ((prediction - self.targets) ** 2).mean(dim=0)


def two_targets_losses(model: TwoTargets) -> torch.Tensor:
    return model.losses()


def sgd(params: list[torch.Tensor]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05)


def test_trainer_leaves_stationary_paths_to_newton() -> None:
    # the corrected start is within tol, so every step is a Newton step: the same points as without a trainer
    kwargs = dict(budget=600, tol=1e-8, step_size=0.2, damping=1e-8)
    plain = continue_front(Point(cylinder_point(0.0, 0.3)), cylinder_losses, **kwargs)
    trained = continue_front(Point(cylinder_point(0.0, 0.3)), cylinder_losses, trainer=sgd, weight_step=0.5, **kwargs)
    assert not any(p.trained for p in trained)
    assert [p.values.tolist() for p in trained] == [p.values.tolist() for p in plain]
    assert [p.cost for p in trained] == [p.cost for p in plain]


def test_trainer_trains_a_non_stationary_start_within_the_budget() -> None:
    model = TwoTargets()
    start = two_targets_losses(model).detach()
    points = continue_front(
        model, two_targets_losses, budget=400, tol=1e-6, trainer=sgd, train_steps=10, weight_step=0.1, damping=1.0
    )
    assert torch.equal(two_targets_losses(model).detach(), start)  # the start is left unchanged
    steps = [p for p in points if p.direction >= 0]
    assert steps and all(p.trained for p in steps)  # the residual never reaches 1e-6 with 10 SGD steps
    # each trained point costs its tangent (1 graph gradient + 2 per HVP), its training steps (1 each) and one J
    # (k = 2); a path's first point also pays for its start's J
    for p in steps:
        first = p.step == 1
        assert p.cost == 1 + 2 * p.hvps + 10 + 2 + (2 if first else 0)
    assert sum(p.cost for p in points) <= 400  # training steps are cut to what the budget has left
    for direction in (0, 1):
        path = [points[0]] + [p for p in steps if p.direction == direction and p.accepted]
        traded = torch.stack([p.values[direction] for p in path])
        assert (traded[1:] < traded[:-1]).all()  # accepted: the traded objective went down
    # training moved the points toward the front: some point dominates the untrained start
    assert any(bool((p.values < start.double()).all()) for p in steps if p.accepted)


def test_weight_step_caps_the_predictor() -> None:
    model = TwoTargets()
    kwargs = dict(budget=200, tol=1e-6, trainer=sgd, train_steps=10, damping=1.0, step_size=1.0, max_step=1.0)
    capped = trace_path(copy.deepcopy(model), two_targets_losses, 0, weight_step=1e-3, **kwargs)
    free = trace_path(copy.deepcopy(model), two_targets_losses, 0, **kwargs)
    # without the cap the first step moves the full step size; the cap shortens every step (t <= 1e-3)
    assert free[0].step_size == pytest.approx(1.0)
    assert capped and all(p.step_size < 0.5 for p in capped)


def test_fill_runs_the_paths_between_the_starts() -> None:
    starts = [Point(cylinder_point(s, 0.1)) for s in (-0.5, 0.0, 0.5)]  # f1 = 0.26, 0.5, 0.74
    points = continue_front(
        starts, cylinder_losses, budget=1500, tol=1e-8, step_size=0.2, damping=1e-8, directions="fill"
    )
    # start 0 has the lowest f1, start 2 the lowest f2: neither goes further out, the middle goes both ways
    assert {(p.start, p.direction) for p in points if p.direction >= 0} == {(0, 1), (1, 0), (1, 1), (2, 0)}


def test_trained_step_host_reads() -> None:
    # one read per J (values and residual), |J^T beta|, the tangent's sign and length, the warm start's
    # tolerance (not on the first step) and the accepted step's move; MINRES reads once per iteration on
    # the CPU (check_every=1 there) and runs to max_iter at solve_tol=1e-30; SGD reads nothing
    reads = []
    for budget in (60, 120):
        model = TwoTargets()
        with Dispatches() as dispatched:
            points = trace_path(
                model, two_targets_losses, 0, budget=budget, tol=1e-6, trainer=sgd, train_steps=10,
                weight_step=0.1, damping=1.0, solve_tol=1e-30, max_iter=3,
            )  # fmt: skip
        assert all(p.accepted and p.trained for p in points)
        reads.append((len(points), dispatched.host_reads))
    (steps, total), (more_steps, more_total) = reads
    assert more_steps > steps
    assert total == 1 + 4 + 3 + (steps - 1) * (5 + 3)  # the start's J, then 4 + 3 on the first step, 5 + 3 after
    assert more_total - total == (more_steps - steps) * (5 + 3)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"trainer": 0.1}, TypeError, "trainer must be None or a callable returning an optimizer, got float"),
        ({"trainer": lambda params: params}, TypeError, "trainer must return a torch.optim.Optimizer, got list"),
        ({"trainer": sgd, "train_steps": 0}, ValueError, "train_steps must be >= 1"),
        ({"weight_step": 0.0}, ValueError, "weight_step must be > 0"),
    ],
)
def test_bad_training_arguments(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        trace_path(TwoTargets(), two_targets_losses, 0, budget=100, tol=1e-6, **kwargs)


def test_bad_directions() -> None:
    with pytest.raises(ValueError, match="directions must be None, 'extend', 'fill' or objective indices, got 'all'"):
        continue_front(Point(cylinder_point(0.0, 0.0)), cylinder_losses, budget=10, directions="all")
