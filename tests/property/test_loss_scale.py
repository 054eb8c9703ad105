"""Loss scale (issue 14, item 2): finite losses of any size give finite weights on the simplex, and
the methods whose weights are invariant to one positive factor on all losses (MGDA with each
normalisation, the explorer's solve) return the same weights for factors from 1e-30 to 1e30."""

from fractions import Fraction

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import assume, given, settings

from tests.helpers import TwoHeads, features_and_losses, flat_parameters, task_losses
from torch_moo import ChebyshevALM, MinMaxWeighting, MultiGradientDescent, ParetoTangentExplorer
from torch_moo.functional import minres, project_simplex, simplex_threshold

DTYPES = st.sampled_from([torch.float32, torch.float64])
# Every magnitude from 1e-30 to 1e30, both signs and zero, in one vector.
ENTRY = st.one_of(st.just(0.0), st.floats(-30, 30).map(lambda e: 10.0**e), st.floats(-30, 30).map(lambda e: -(10.0**e)))
# Entries close together far from zero, where float32 sums lose the small differences.
CLUSTER = st.tuples(st.floats(-30, 30), st.lists(st.floats(-3, 3), min_size=1, max_size=12)).map(
    lambda t: [10.0 ** t[0] + d for d in t[1]]
)
FACTOR_EXPONENT = st.floats(-30, 30)  # factor 10**e on all losses


def exact(tensor: torch.Tensor) -> list[Fraction]:
    return [Fraction(x) for x in tensor.tolist()]  # float32 values widen to float64 exactly


# ----------------------------------------------------------------------------------- simplex
@given(st.one_of(st.lists(ENTRY, min_size=1, max_size=12), CLUSTER), DTYPES)
def test_projection_satisfies_kkt_exactly_at_every_scale(values, dtype):
    # KKT of min ||w - v||^2 on the simplex, checked in rational arithmetic on the returned w:
    # w >= 0, sum w = 1, v_i - w_i = tau on the support, v_j <= tau off it. The error of w is
    # absolute, whatever the scale (the sums run on v - max v, whose active entries lie in
    # (-1, 0]): a cumulative sum of k such terms is off by at most k^2 eps, the threshold
    # (divided by up to k) by k eps, so (k + 4) k eps bounds every check.
    v = torch.tensor(values, dtype=torch.float64).to(dtype)
    w = project_simplex(v)
    k, eps = len(values), torch.finfo(dtype).eps
    tol = Fraction((k + 4) * k * eps)
    vs, ws = exact(v), exact(w)
    assert w.dtype == dtype and all(x >= 0 for x in ws)
    assert abs(sum(ws) - 1) <= tol
    gaps = [vi - wi for vi, wi in zip(vs, ws) if wi > 0]
    assert gaps and max(gaps) - min(gaps) <= 2 * tol
    assert all(vi <= min(gaps) + 2 * tol for vi, wi in zip(vs, ws) if wi == 0)
    # The threshold: the same tau, rounded once more to v's largest magnitude.
    tau = Fraction(simplex_threshold(v).item())
    assert abs(tau - min(gaps)) <= 2 * tol + Fraction(2 * eps) * max(1, max(abs(x) for x in vs))


def test_projection_of_large_entries_is_not_all_zero():
    # float32 summed 3e7 + 1 to 3e7: the threshold rounded to 3e7 and every weight to 0.
    assert project_simplex(torch.tensor([3e7, 1.0])).tolist() == [1.0, 0.0]
    assert project_simplex(torch.tensor([3e38, -3e38])).tolist() == [1.0, 0.0]  # v - max v overflows: still 0
    torch.testing.assert_close(project_simplex(torch.tensor([1e30, 1e30])), torch.tensor([0.5, 0.5]))


# -------------------------------------------------------------------------------------- MGDA
def mgda_step(factor: float, normalization: str, features: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(alpha, the .grad written, stationarity) for losses times ``factor``."""
    model = TwoHeads()
    opt = MultiGradientDescent(model.parameters(), num_objectives=2, normalization=normalization, lr=1e-2)
    if features:
        z, losses = features_and_losses(model, 0)
        alpha = opt.backward(factor * losses, features=z)
    else:
        alpha = opt.backward(factor * task_losses(model, 0))
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    return alpha, grad, opt.stationarity


@settings(max_examples=25)
@given(FACTOR_EXPONENT, st.sampled_from(["none", "l2", "loss", "loss+"]), st.booleans())
def test_mgda_weights_and_direction_do_not_depend_on_the_loss_scale(exponent, normalization, features):
    # The float32 Gram matrix overflowed at 1e20 (NaN weights) and flushed to 0 at 1e-30 (uniform
    # weights, stationarity 0). Losses times c give gradients c g up to float32 rounding (the
    # backward rounds c / n and its products anew, a few eps per entry); the 2 x 2 solve and
    # ||d||^2 pass that on with the gradients' conditioning, well inside 1e-4.
    factor = 10.0**exponent
    alpha, grad, stationarity = mgda_step(1.0, normalization, features)
    scaled_alpha, scaled_grad, scaled_stationarity = mgda_step(factor, normalization, features)
    assert torch.isfinite(scaled_alpha).all() and (scaled_alpha >= 0).all()
    torch.testing.assert_close(scaled_alpha, alpha, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scaled_grad / factor, grad, rtol=1e-4, atol=1e-6)
    # ||d||^2 ~ c^2: float64, neither 0 nor inf between 1e-60 and 1e60.
    assert stationarity.dtype == scaled_stationarity.dtype == torch.float64
    assert abs(scaled_stationarity.item() / factor**2 / stationarity.item() - 1) < 1e-4


@given(st.integers(-100, 100), st.sampled_from(["none", "l2", "loss", "loss+"]), st.booleans())
def test_mgda_is_exactly_invariant_to_a_power_of_two(power, normalization, features):
    # 2^p scales every float32 gradient exactly (no rounding), and the Gram matrix is formed on
    # the Jacobian scaled back by a power of two: the same bits, from 8e-31 to 1.3e30.
    alpha, grad, _ = mgda_step(1.0, normalization, features)
    scaled_alpha, scaled_grad, _ = mgda_step(2.0**power, normalization, features)
    assert torch.equal(scaled_alpha, alpha)
    assert torch.equal(scaled_grad, grad * 2.0**power)


@pytest.mark.parametrize("factor", [1e-30, 1e-20, 1e20, 1e30])
def test_mgda_training_stays_finite(factor):
    # The issue's report: losses times 1e20 gave NaN weights and then NaN parameters.
    model = TwoHeads()
    opt = MultiGradientDescent(model.parameters(), num_objectives=2, lr=1e-2)
    for step in range(3):
        opt.zero_grad()
        alpha = opt.backward(factor * task_losses(model, step))
        grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        assert torch.isfinite(grad).all() and (grad != 0).any()
        opt.step()  # Adam: its epsilon makes steps at 1e-30 negligible, not NaN
        assert torch.isfinite(alpha).all() and abs(alpha.sum().item() - 1) < 1e-6
        assert 0 < opt.stationarity.item() < float("inf")
    assert torch.isfinite(flat_parameters(model)).all()


@pytest.mark.parametrize("factor", [1e-30, 1.0, 1e30])
def test_mgda_moments_weights_stay_on_the_simplex(factor):
    # Not invariant: Adam's epsilon and its second moment (g^2 overflows float32 above ~1.8e19,
    # as in torch.optim.Adam) depend on the scale; the weights must still be valid.
    model = TwoHeads()
    opt = MultiGradientDescent(
        model.parameters(), num_objectives=2, moments=(0.9, 0.999), base=torch.optim.SGD, lr=1e-2
    )
    for step in range(3):
        opt.zero_grad()
        alpha = opt.backward(factor * task_losses(model, step))
        opt.step()
        assert torch.isfinite(alpha).all() and (alpha >= 0).all() and abs(alpha.sum().item() - 1) < 1e-6
    assert torch.isfinite(flat_parameters(model)).all()


# --------------------------------------------------------------------------- tangent explorer
def tangent_move(
    model: torch.nn.Module, losses, factor: float, **options
) -> tuple[torch.Tensor, ParetoTangentExplorer]:
    """The unit tangent direction of one exploration step (its move over the step size)."""
    opt = ParetoTangentExplorer(model.parameters(), num_objectives=2, beta=[1.0, 0.0], step_size=0.1, **options)
    start = flat_parameters(model)
    opt.step(lambda: factor * losses(model))
    return (flat_parameters(model) - start) / 0.1, opt


@settings(max_examples=20)
@given(st.integers(-100, 100))
def test_tangent_direction_is_exactly_invariant_to_a_power_of_two(power):
    # Undamped, (cH) v = c J^T beta has the solution of H v = J^T beta; MINRES runs on the system
    # rescaled by a power of two from max |J|, so a power-of-two factor gives the same bits.
    # TwoHeads' Hessian is singular, MINRES stops at max_iter, so this is the sharp test.
    move, opt = tangent_move(TwoHeads(), lambda m: task_losses(m, 0), 1.0, damping=0.0)
    scaled, scaled_opt = tangent_move(TwoHeads(), lambda m: task_losses(m, 0), 2.0**power, damping=0.0)
    assert torch.equal(scaled, move)
    assert torch.equal(scaled_opt.tangent_residual, opt.tangent_residual)


class Quadratics(torch.nn.Module):
    """f_i = ||A_i x - b_i||^2 / 2 in R^6: positive definite Hessians, so MINRES converges."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.a = torch.randn(2, 8, 6, generator=generator)
        self.b = torch.randn(2, 8, generator=generator)
        self.x = torch.nn.Parameter(torch.randn(6, generator=generator))

    def losses(self) -> torch.Tensor:
        return (self.a @ self.x - self.b).square().sum(dim=1) / 2


@settings(max_examples=25)
@given(FACTOR_EXPONENT, st.floats(0.0, 1.0))
def test_tangent_direction_does_not_depend_on_the_loss_scale(exponent, damping):
    # With damping delta the system is (H + delta I) v = J^T beta: losses times c scale H and J
    # by c, so the same solution needs delta times c. The unit direction, the weights and the
    # relative residual then agree up to float32 rounding amplified by the condition number of
    # H + delta I (below 1e3 here): 1e-3. MINRES's relative stopping test (tol 1e-6) takes the
    # same number of iterations at every scale, give or take the one where rounding decides.
    factor = 10.0**exponent
    move, opt = tangent_move(Quadratics(), Quadratics.losses, 1.0, damping=damping, tol=1e-6)
    scaled, scaled_opt = tangent_move(Quadratics(), Quadratics.losses, factor, damping=damping * factor, tol=1e-6)
    torch.testing.assert_close(scaled, move, rtol=1e-3, atol=1e-3)
    # the MGDA weights at the start, which the step solves for first, through the public backward
    weights, scaled_weights = (
        ParetoTangentExplorer(Quadratics().parameters(), num_objectives=2).backward(c * Quadratics().losses())
        for c in (1.0, factor)
    )
    torch.testing.assert_close(scaled_weights, weights, rtol=1e-4, atol=1e-5)
    assert abs(int(scaled_opt.tangent_solve.iterations) - int(opt.tangent_solve.iterations)) <= 1
    assert scaled_opt.tangent_residual < 1e-5 and opt.tangent_residual < 1e-5


@pytest.mark.parametrize("factor", [1e-30, 1e30])
@pytest.mark.parametrize("damping", [0.0, 0.1])
def test_tangent_step_is_a_unit_move_at_every_scale(factor, damping):
    # With fixed damping the direction depends on the scale (tested above); it must stay a
    # finite unit vector. MINRES's squared norms overflowed (damping 0.1 at 1e-30: the operator
    # is ~1e29 after the rescaling, its residual vectors ~1e22) and gave NaN.
    move, opt = tangent_move(TwoHeads(), lambda m: task_losses(m, 0), factor, damping=damping)
    assert torch.isfinite(move).all()
    assert abs(move.norm().item() - 1) < 1e-5


@given(st.floats(-30, 30), st.floats(-30, 30))
def test_minres_solution_scales_with_the_system(operator_exponent, rhs_exponent):
    # (c A) x = c' b has the solution (c'/c) x: MINRES's recurrences are homogeneous, and its
    # norms are taken after an exact power-of-two rescaling (a plain sum of squares is 0 for
    # float32 entries of 1e-30 and inf for 1e20). A is well conditioned (eigenvalues 1..4),
    # so float32 rounding of c A and c' b (1e-7) stays below 1e-5 in x. The solution itself
    # must be a normal float32 number: c'/c within 1e+-30.
    assume(abs(rhs_exponent - operator_exponent) <= 30)
    a = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    b = torch.tensor([1.0, -1.0, 0.5, 2.0])
    c, c_rhs = 10.0**operator_exponent, 10.0**rhs_exponent
    reference = minres(lambda v: a @ v, b, tol=1e-6)
    scaled = minres(lambda v: (c * a) @ v, c_rhs * b, tol=1e-6)
    torch.testing.assert_close(scaled.solution * (c / c_rhs), reference.solution, rtol=1e-5, atol=1e-6)
    assert scaled.iterations == reference.iterations


# ------------------------------------------------------------------------- loss-space methods
@settings(max_examples=30)
@given(st.floats(-30, 30), st.floats(-30, 30), st.sampled_from(["projected", "mirror"]))
def test_minmax_weights_stay_on_the_simplex_for_losses_up_to_1e30(first, second, ascent):
    # Losses ~1e9 made the float32 projection return all zeros. A mirror weight that underflows
    # is kept at the smallest normal number: it stays positive and can recover.
    model = TwoHeads()
    opt = MinMaxWeighting(model.parameters(), num_objectives=2, ascent=ascent, lr=1e-3)
    scales = torch.tensor([10.0**first, 10.0**second])
    for step in range(4):
        opt.zero_grad()
        opt.backward(scales * task_losses(model, step))
        opt.step()
        w = opt.task_weights
        assert torch.isfinite(w).all() and (w >= 0).all() and abs(w.sum().item() - 1) < 1e-6
        if ascent == "mirror":
            assert (w > 0).all()
    assert torch.isfinite(flat_parameters(model)).all()
    opt.load_state_dict(opt.state_dict())  # a state it produced is one it accepts


@pytest.mark.parametrize("ascent", ["projected", "mirror"])
def test_minmax_weights_at_losses_of_1e9_go_to_the_worst_task(ascent):
    # w + eta (L - gamma (w - 1/2)) ~ [5e7, 0.5]: the projection is [1, 0] exactly, the mirror
    # step [1, tiny]; float32 sums gave [0, 0].
    model = TwoHeads()
    opt = MinMaxWeighting(model.parameters(), num_objectives=2, ascent=ascent, lr=1e-3)
    opt.backward(torch.tensor([1e9, 1.0]) * task_losses(model, 0))
    opt.step()
    torch.testing.assert_close(opt.task_weights, torch.tensor([1.0, 0.0]))
    assert opt.task_weights[0] == 1


def test_mirror_ascent_recovers_a_weight_that_underflowed():
    # log 0 = -inf would keep a weight at 0 for good; from the smallest normal number the pull
    # towards uniform (gamma) and the ascent bring it back once its loss is the larger.
    model = TwoHeads()
    opt = MinMaxWeighting(model.parameters(), num_objectives=2, ascent="mirror", ascent_step=0.1, lr=1e-3)
    opt.backward(torch.tensor([1e9, 1.0]) * task_losses(model, 0))
    opt.step()
    assert opt.task_weights[1] == torch.finfo(torch.float32).tiny
    for step in range(1, 30):
        opt.zero_grad()
        opt.backward(torch.tensor([1.0, 100.0]) * task_losses(model, step))
        opt.step()
    assert opt.task_weights[1] > 0.5


def test_chebyshev_alm_at_the_issues_settings_keeps_its_weights():
    # The issue's report: penalty_growth=2, outer_every=1 reached penalty ~2.6e5 with losses
    # ~[1.1, 134] at step 19, where lambda + mu g passed 2^24 and every weight became 0.
    model = TwoHeads()
    opt = ChebyshevALM(
        model.parameters(), num_objectives=2, preference=[0.5, 0.5], penalty_growth=2, outer_every=1, lr=1e-3
    )
    for step in range(25):
        opt.zero_grad()
        w = opt.backward(torch.tensor([1.0, 150.0]) * task_losses(model, step))
        opt.step()
        assert torch.isfinite(w).all() and (w >= 0).all() and abs(w.sum().item() - 1) < 1e-6
    assert opt.penalty.item() == 1e6  # the cap: the largest lambda + mu g, ~3.5e7, was reached


@settings(max_examples=20)
@given(st.floats(-30, 30), st.floats(-30, 30))
def test_chebyshev_alm_weights_stay_on_the_simplex_for_losses_up_to_1e30(first, second):
    model = TwoHeads()
    opt = ChebyshevALM(
        model.parameters(), num_objectives=2, preference=[0.5, 0.5], penalty_growth=2, outer_every=1, lr=1e-3
    )
    scales = torch.tensor([10.0**first, 10.0**second])
    for step in range(4):
        opt.zero_grad()
        w = opt.backward(scales * task_losses(model, step))
        opt.step()
        assert torch.isfinite(w).all() and (w >= 0).all() and abs(w.sum().item() - 1) < 1e-6
