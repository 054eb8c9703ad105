"""ChebyshevALM reaches the weighted-Chebyshev optimum, also where no weighted sum can."""

import math

import pytest
import torch

from torch_moo import ChebyshevALM

EPS = 1e-4


def bisect(function, low, high, iterations=200):
    """Root of a function that changes sign on [low, high] (float64, to machine precision)."""
    f_low = function(low)
    for _ in range(iterations):
        middle = (low + high) / 2
        if (function(middle) > 0) == (f_low > 0):
            low, f_low = middle, function(middle)
        else:
            high = middle
    return (low + high) / 2


def chebyshev_gap(front, k):
    """k1 (f1 + eps S) - k2 (f2 + eps S) along a front parameterised by s: zero at the optimum."""

    def gap(s):
        f1, f2 = front(s)
        return k[0] * (f1 + EPS * (f1 + f2)) - k[1] * (f2 + EPS * (f1 + f2))

    return gap


def run(objectives, x0, k, steps, **options):
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    opt = ChebyshevALM([x], num_objectives=2, preference=k, augmentation=EPS, outer_every=20, lr=0.01, **options)
    for _ in range(steps):
        opt.zero_grad()
        losses = objectives(x)
        opt.backward(losses)
        opt.step()
    return objectives(x).detach()


# Convex: f_i = ||x - p_i||^2; the Pareto set is the segment from p1 to p2 and, with D = ||p2 - p1||^2,
# the front is (s^2 D, (1 - s)^2 D), s in [0, 1].
P1, P2 = torch.tensor([0.0, 0.0], dtype=torch.float64), torch.tensor([2.0, 1.0], dtype=torch.float64)
D = (P2 - P1).square().sum().item()


def convex(x):
    return torch.stack([(x - P1).square().sum(), (x - P2).square().sum()])


@pytest.mark.parametrize("k", [(0.5, 0.5), (0.2, 0.8), (0.9, 0.1)])
@pytest.mark.parametrize("base", [torch.optim.Adam, torch.optim.SGD])
def test_convex_front_solution_is_the_chebyshev_optimum(k, base):
    losses = run(convex, [1.0, -1.0], k, 4000, base=base)
    s = bisect(chebyshev_gap(lambda s: (s * s * D, (1 - s) ** 2 * D), k), 0.0, 1.0)
    optimum = torch.tensor([s * s * D, (1 - s) ** 2 * D], dtype=torch.float64)
    # Deterministic gradients and 200 outer updates: the remaining error is Adam's final
    # oscillation at lr 1e-2 and the float32 weights, both far below 1e-4 of the loss scale D = 5.
    torch.testing.assert_close(losses, optimum, atol=5e-4, rtol=0)


# Concave: Fonseca-Fleming with n = 2. Pareto set x1 = x2 = s in [-1/sqrt 2, 1/sqrt 2].
ROOT_HALF = 1 / math.sqrt(2)


def fonseca_fleming(x):
    return torch.stack([1 - torch.exp(-(x - ROOT_HALF).square().sum()), 1 - torch.exp(-(x + ROOT_HALF).square().sum())])


def fonseca_front(s):
    return 1 - math.exp(-2 * (s - ROOT_HALF) ** 2), 1 - math.exp(-2 * (s + ROOT_HALF) ** 2)


def test_no_weighted_sum_reaches_the_middle_of_a_concave_front():
    grid = torch.linspace(-ROOT_HALF, ROOT_HALF, 20001, dtype=torch.float64)
    front = torch.tensor([fonseca_front(s) for s in grid.tolist()], dtype=torch.float64)
    for w in torch.linspace(0, 1, 201, dtype=torch.float64):
        best = front[(w * front[:, 0] + (1 - w) * front[:, 1]).argmin()]
        # Every weighted-sum optimum sits at an end of the front (inside it only by the flat
        # minimum of the favoured objective, for weights near 0 or 1), far from the middle 0.632.
        assert best.min() < 0.01  # measured worst case 0.0018 (w = 0.5)
    for w in (0.3, 0.5, 0.7):  # and gradient descent on weighted sums ends there too
        x = torch.tensor([0.1, -0.05], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([x], lr=0.01)
        for _ in range(3000):
            opt.zero_grad()
            losses = fonseca_fleming(x)
            (w * losses[0] + (1 - w) * losses[1]).backward()
            opt.step()
        assert fonseca_fleming(x).min() < 0.01


@pytest.mark.parametrize("k", [(0.5, 0.5), (0.3, 0.7), (0.6, 0.4)])
def test_chebyshev_reaches_the_concave_part_of_the_front(k):
    # Near a concave front the augmented Lagrangian is locally convex only above a
    # problem-dependent penalty; 10 clears it here (1 does not within the step budget).
    losses = run(fonseca_fleming, [0.1, -0.05], k, 3000, penalty=10.0)
    s = bisect(chebyshev_gap(fonseca_front, k), -ROOT_HALF, ROOT_HALF)
    optimum = torch.tensor(fonseca_front(s), dtype=torch.float64)
    # Losses lie in [0, 1]; 1e-3 is the remaining oscillation of Adam at lr 1e-2 (measured 5e-5).
    torch.testing.assert_close(losses, optimum, atol=1e-3, rtol=0)
    assert losses.min() > 0.3  # far from both ends, where every weighted sum lands
