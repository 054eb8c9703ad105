"""ChebyshevALM's ``multiplier_update="reference"`` against a port of the authors' update (MDMTN).

The authors' loop (salomonhotegni/MDMTN, ``src/utils/WCsAL_utils.py`` and ``WCsAL_Train.py``),
per ALM iteration: for each batch, constraints ``c = g - t`` with
``g_i = k_i ((f_i - a_i) + eps sum_j (f_j - a_j))``, the Lagrangian
``t + lambda.c + mu/2 ||c||^2`` minimised by Adam over the network *and* the scalar ``t``; then
``lambda += mu * (sum over the batches of c)`` and ``mu *= rho``, with ``lambda_0 = 1/m``.

ChebyshevALM minimises over ``t`` exactly instead. Both are fed the same loss sequence (the
losses our run saw), so only the update rules differ. The part of lambda orthogonal to the
all-ones vector, ``P lambda = lambda - mean(lambda)``, does not depend on ``t`` at all
(``P c = P g``): it must agree. The sum does depend on ``t``: at the exact level it is exactly 1
(every step's estimate sums to 1), which ChebyshevALM keeps; with Adam's ``t`` it drifts by
however far ``t`` lags its optimum (1e-5 to 5e-2 after 10 iterations in this port, depending on
``t``'s start and learning rate). The port is therefore compared on ``P lambda``, and our sum on
its exact value 1. The port cannot use the exact level itself: that update maps
``sum(lambda) - 1`` to ``(1 - B)(sum(lambda) - 1)`` per iteration of ``B`` batches, so even
float64 rounding (1e-16) grows past 1 within 10 iterations of 157 batches.
"""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from tests.strategies import finite, preferences
from torch_moo import ChebyshevALM
from torch_moo.functional import chebyshev_objective_weights, chebyshev_terms, optimal_level

BATCHES, ITERATIONS = 157, 10  # one ALM iteration per epoch of 157 batches, as in the issue
PREFERENCE = (0.01, 0.8, 0.19)  # MDMTN's (sparsity, task 1, task 2)
EPSILON = 1e-4


def centred(x):
    return x - x.mean(dim=-1, keepdim=True)


def authors_update(losses, preference, penalty, growth, batches, lr, level=0.0):
    """Port of MDMTN's multiplier loop in float64, fed a recorded ``(steps, m)`` loss sequence.

    ``t`` is their ``wc_variable``: an Adam parameter (their ``model.zero_grad()`` never clears
    its gradient, so it accumulates over the batches, as here). Returns the multipliers after
    each ALM iteration, ``(iterations, m)``.
    """
    f = losses.to(torch.float64)
    m = f.shape[1]
    k = torch.tensor(preference, dtype=torch.float64)
    multipliers = torch.full((m,), 1.0 / m, dtype=torch.float64)
    t = torch.nn.Parameter(torch.tensor(level, dtype=torch.float64))
    adam = torch.optim.Adam([t], lr=lr)
    trajectory = []
    for start in range(0, f.shape[0], batches):
        summed = torch.zeros(m, dtype=torch.float64)
        for values in f[start : start + batches]:
            c = k * (values + EPSILON * values.sum()) - t
            summed += c.detach()
            (t + multipliers @ c + penalty / 2 * c.square().sum()).backward()
            adam.step()
        multipliers = multipliers + penalty * summed
        penalty = growth * penalty
        trajectory.append(multipliers.clone())
    return torch.stack(trajectory)


def train_at_mdmtn_settings(penalty, lr, seed=0):
    """A small two-task network on fixed random data, ChebyshevALM at MDMTN's settings.

    Returns the losses of every step, the multipliers after every outer update and the weights
    of every step.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCHES, 16, 10, generator=generator)
    labels = torch.randint(0, 4, (2, BATCHES, 16), generator=generator)
    torch.manual_seed(seed)
    trunk, heads = torch.nn.Linear(10, 12), torch.nn.ModuleList(torch.nn.Linear(12, 4) for _ in range(2))
    opt = ChebyshevALM(
        [*trunk.parameters(), *heads.parameters()],
        num_objectives=3,
        preference=PREFERENCE,
        augmentation=EPSILON,
        penalty=penalty,
        penalty_growth=2.0,
        outer_every=BATCHES,
        multiplier_update="reference",
        lr=lr,
    )
    losses, multipliers, weights = [], [], []
    for _ in range(ITERATIONS):
        for b in range(BATCHES):
            hidden = torch.relu(trunk(x[b]))
            tasks = [torch.nn.functional.cross_entropy(head(hidden), labels[i, b]) for i, head in enumerate(heads)]
            step_losses = torch.stack([trunk.weight.norm(dim=0).mean(), *tasks])  # a group-sparsity term first
            opt.zero_grad()
            weights.append(opt.backward(step_losses))
            opt.step()
            losses.append(step_losses.detach())
        multipliers.append(opt.multipliers)
    return torch.stack(losses), torch.stack(multipliers), torch.stack(weights)


# (penalty, Adam lr): Cifar10Mnist's and MultiMNIST's settings in the authors' code.
@pytest.mark.parametrize("penalty, lr", [(6.8e-8, 1e-4), (2.5e-8, 2.5e-3)])
def test_multipliers_track_the_authors_update_over_ten_alm_iterations(penalty, lr):
    losses, ours, weights = train_at_mdmtn_settings(penalty, lr)
    theirs = authors_update(losses, PREFERENCE, penalty, 2.0, BATCHES, lr)
    assert torch.isfinite(weights).all() and torch.isfinite(ours).all()
    ours = ours.to(torch.float64)
    # Our multipliers are float32: each outer update rounds them once (half a spacing, and the
    # spacing at |lambda| is at most eps32 * |lambda|), and the rounding is carried on, so after
    # iteration i they differ from the exact update by at most (i + 1) spacings; the float64
    # sums add ~1e-14. The increments are 1e-5 (iteration 1) to 1e-2, so this bound is 1% of
    # the first one: the old float32 bookkeeping was off by 10x there.
    spacing = torch.finfo(torch.float32).eps * ours.abs().amax(dim=1, keepdim=True)
    bound = spacing * torch.arange(2, ITERATIONS + 2, dtype=torch.float64).unsqueeze(1)
    assert ((centred(ours) - centred(theirs)).abs() <= bound).all(), (centred(ours) - centred(theirs)).abs().amax(1)
    # The authors' update keeps sum = 1 at the exact level; ours holds it up to the rounding of
    # m float32 entries (half a spacing each), after every one of the 10 iterations.
    assert ((ours.sum(dim=1) - 1).abs() <= 3 * spacing.squeeze(1) / 2).all(), ours.sum(dim=1) - 1
    # The increments are real: the multipliers moved by far more than the bound.
    assert (centred(ours)[-1].abs().max() > 100 * bound[-1]).all()


@settings(deadline=None, max_examples=60)
@given(
    st.integers(2, 5).flatmap(
        lambda m: st.tuples(
            st.lists(st.lists(st.floats(-10, 10, width=32), min_size=m, max_size=m), min_size=1, max_size=40),
            preferences(m, width=32),
            st.lists(st.floats(-2, 2, width=32), min_size=m, max_size=m),
        )
    ),
    st.floats(0, 0.1),
    st.floats(-9, 1).map(lambda e: 10.0**e),
)
def test_outer_update_is_the_exact_level_update_with_the_sum_held_at_one(problem, augmentation, penalty):
    sequence, preference, start = problem
    m = len(start)
    parameter = torch.nn.Parameter(torch.zeros(m))
    opt = ChebyshevALM(
        [parameter],
        num_objectives=m,
        preference=preference,
        augmentation=augmentation,
        penalty=penalty,
        multiplier_update="reference",
        base=torch.optim.SGD,
        lr=0.0,
    )
    state = opt.state_dict()
    start = torch.tensor(start, dtype=torch.float64)
    state["torch_moo"]["state"]["multipliers"] = (centred(start) + 1.0 / m).float()  # sum 1 up to rounding
    opt.load_state_dict(state)
    lam, mu = opt.multipliers.to(torch.float64), opt.penalty.to(torch.float64)
    k = opt.preference.to(torch.float64)
    expected = lam.clone()
    for values in sequence:
        opt.zero_grad()
        opt.backward(parameter + torch.tensor(values))
        opt.step()
        terms = chebyshev_terms(
            torch.tensor(values, dtype=torch.float64), k, torch.zeros(m, dtype=torch.float64), augmentation
        )
        expected += mu * (terms - optimal_level(terms, lam, mu, rule="reference"))  # lambda += mu c(t*)
    opt.outer_step()
    got = opt.multipliers.to(torch.float64)
    # By definition: the authors' update at the exact level (P-part P(lambda) + mu sum P(g)), shifted
    # onto sum = 1 (the loaded lambda's sum is off by its float32 rounding, which the update multiplies
    # by 1 - n). One float32 rounding of the result (eps32 * max|lambda|) dominates;
    # forming t* in float64 costs ~1e-16 * |sum z| / mu, which 1e-9 * (1 + max|lambda|) covers.
    want = centred(expected) + 1.0 / m
    scale = 1 + want.abs().max()
    assert (got - want).abs().max() <= torch.finfo(torch.float32).eps * scale + 1e-9 * scale
    assert abs(got.sum() - 1) <= m * torch.finfo(torch.float32).eps * scale


@given(
    st.integers(1, 6).flatmap(
        lambda m: st.tuples(
            st.lists(finite, min_size=m, max_size=m),
            preferences(m),
        )
    ),
    st.floats(0, 0.1, width=64),
)
def test_weights_for_any_dual_are_the_gradient_direction_with_unit_l1_norm(problem, augmentation):
    dual, preference = (torch.tensor(v, dtype=torch.float64) for v in problem)
    raw = preference * dual + augmentation * (preference * dual).sum()  # dL/df_j
    weights = chebyshev_objective_weights(dual, preference, augmentation)
    assert torch.isfinite(weights).all() and (weights.abs() <= 1).all()
    norm = raw.abs().sum()
    if norm == 0:
        assert (weights == 0).all()
        return
    # Double rounding of <= 6 products and sums: 1e-12 is far above it.
    assert torch.allclose(weights * norm, raw, atol=1e-12 * norm, rtol=0)  # a positive multiple of the gradient
    assert abs(weights.abs().sum() - 1) <= 1e-12
    if (raw >= 0).all():
        assert abs(weights.sum() - 1) <= 1e-12


def test_negative_weighted_dual_gives_finite_weights_not_a_division_by_tiny():
    # sum_i k_i d_i = -1 <= 0: the old normalisation divided by float32's tiny (~1e38 weights).
    weights = chebyshev_objective_weights(torch.tensor([2.0, -1.0]), torch.tensor([0.0, 1.0]), 0.0)
    assert torch.equal(weights, torch.tensor([0.0, -1.0]))  # direction kept: dL/df = (0, -1)


def test_reference_rule_weights_stay_finite_where_the_weighted_dual_sum_is_negative():
    parameter = torch.nn.Parameter(torch.zeros(3))
    opt = ChebyshevALM(
        [parameter],
        num_objectives=3,
        preference=PREFERENCE,
        penalty=6.8e-8,
        multiplier_update="reference",
        base=torch.optim.SGD,
        lr=0.0,
    )
    state = opt.state_dict()
    state["torch_moo"]["state"]["multipliers"] = torch.tensor([2.0, -0.5, -0.5])  # sum 1, k.lambda < 0
    opt.load_state_dict(state)
    weights = opt.weights(torch.tensor([0.5, 1.4, 1.4]))
    raw = torch.tensor(PREFERENCE) * torch.tensor([2.0, -0.5, -0.5])
    raw = raw + EPSILON * raw.sum()
    torch.testing.assert_close(weights, raw / raw.abs().sum())
