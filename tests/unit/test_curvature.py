"""hessian_vector_product against exact Hessians and finite differences of gradients, in float64."""

import pytest
import torch

from torch_moo.functional import hessian_vector_product, minres


def gradients_of(function, inputs):
    return torch.autograd.grad(function(*inputs), inputs, create_graph=True, materialize_grads=True)


def quadratic(matrix, linear):
    """f(x, y) = z^T A z / 2 + c^T z with z = (x, vec y): its Hessian is A (symmetric)."""

    def function(x, y):
        z = torch.cat((x, y.flatten()))
        return z @ matrix @ z / 2 + linear @ z

    return function


def mlp(x, first, bias, second):
    """A two-layer tanh network's squared output on a fixed batch, as a function of its weights."""
    return (torch.tanh(x @ first + bias) @ second).square().mean()


def test_matches_the_exact_hessian_of_a_quadratic():
    generator = torch.Generator().manual_seed(0)
    square = torch.randn(8, 8, generator=generator, dtype=torch.float64)
    matrix, linear = square + square.T, torch.randn(8, generator=generator, dtype=torch.float64)
    shapes = [(2,), (2, 3)]
    inputs = [torch.randn(s, generator=generator, dtype=torch.float64).requires_grad_() for s in shapes]
    vector = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
    product = hessian_vector_product(gradients_of(quadratic(matrix, linear), inputs), inputs, vector)
    assert [p.shape for p in product] == [x.shape for x in inputs]
    # H v = A v exactly, up to the rounding of a few length-8 sums.
    expected = matrix @ torch.cat((vector[0], vector[1].flatten()))
    torch.testing.assert_close(torch.cat((product[0], product[1].flatten())), expected, rtol=0, atol=1e-12)


def test_matches_central_differences_of_the_gradient_on_an_mlp():
    generator = torch.Generator().manual_seed(1)
    batch = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    shapes = [(3, 4), (4,), (4, 2)]
    weights = [torch.randn(s, generator=generator, dtype=torch.float64, requires_grad=True) for s in shapes]
    vector = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]

    def function(*parameters):
        return mlp(batch, *parameters)

    product = hessian_vector_product(gradients_of(function, weights), weights, vector)
    step = 1e-5

    def gradient_at(sign):
        moved = [(w + sign * step * v).detach().requires_grad_() for w, v in zip(weights, vector)]
        return torch.autograd.grad(function(*moved), moved)

    differences = [(p - m) / (2 * step) for p, m in zip(gradient_at(1.0), gradient_at(-1.0))]
    # Central differences err by ~ step^2 |third derivative| ~ 1e-10 plus rounding
    # ~ eps |gradient| / step ~ 1e-11, for entries of order 1: 1e-7 leaves a wide margin and
    # still fails on any error in the product itself.
    for got, expected in zip(product, differences):
        torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-7)


def test_inputs_the_gradient_does_not_depend_on_get_zeros():
    x = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    linear = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)  # f is linear in it
    unused = torch.ones(3, dtype=torch.float64, requires_grad=True)  # f does not depend on it
    inputs = [x, linear, unused]
    gradients = gradients_of(lambda x, linear, unused: (x**3).sum() + (linear * 2).sum(), inputs)
    vector = [torch.ones_like(tensor) for tensor in inputs]
    product = hessian_vector_product(gradients, inputs, vector)
    assert torch.equal(product[0], 6 * x.detach())
    assert torch.equal(product[1], torch.zeros(2, dtype=torch.float64))
    assert torch.equal(product[2], torch.zeros(3, dtype=torch.float64))


def test_retains_the_graph_for_repeated_products_unless_told_not_to():
    x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    gradients = gradients_of(lambda x: (x**3).sum(), [x])
    vector = [torch.tensor([1.0, 0.0], dtype=torch.float64)]
    first = hessian_vector_product(gradients, [x], vector)
    assert not first[0].requires_grad
    assert torch.equal(hessian_vector_product(gradients, [x], vector, retain_graph=False)[0], first[0])
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        hessian_vector_product(gradients, [x], vector)


def test_minres_with_products_solves_a_newton_system():
    generator = torch.Generator().manual_seed(2)
    square = torch.randn(8, 8, generator=generator, dtype=torch.float64)
    matrix, linear = square + square.T, torch.zeros(8, dtype=torch.float64)
    inputs = [torch.zeros(shape, dtype=torch.float64, requires_grad=True) for shape in [(2,), (2, 3)]]
    gradients = gradients_of(quadratic(matrix, linear), inputs)

    def operator(flat):
        vector = [flat[:2], flat[2:].view(2, 3)]
        return torch.cat([p.flatten() for p in hessian_vector_product(gradients, inputs, vector)])

    rhs = torch.randn(8, generator=generator, dtype=torch.float64)
    result = minres(operator, rhs, shift=0.5, tol=1e-12, max_iter=12)
    expected = torch.linalg.solve(matrix + 0.5 * torch.eye(8, dtype=torch.float64), rhs)
    # A + 0.5 I is indefinite, eigenvalues from -5.2 to 6.1 and condition number 7.4 for this
    # seed: MINRES is exact after 8 iterations up to rounding, and the error is at most 7.4
    # times the relative residual, 1e-12, times ||b|| / 0.8 <~ 5: far below 1e-9.
    torch.testing.assert_close(result.solution, expected, rtol=0, atol=1e-9)


def bad_arguments():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    (gradient,) = torch.autograd.grad((x**3).sum(), [x], create_graph=True)
    (constant,) = torch.autograd.grad((x**3).sum(), [x])
    v = torch.ones(2)
    return [
        (([gradient], [x], [v, v]), r"one tensor per input, got lengths 1, 1 and 2"),
        (([gradient, gradient], [x], [v]), r"got lengths 2, 1 and 1"),
        (
            ([gradient], [x], [torch.ones(3)]),
            r"gradients\[0\] and vector\[0\] must have the shape of inputs\[0\], \(2,\); got \(2,\) and \(3,\)",
        ),
        (([gradient[:1]], [x], [v]), r"got \(1,\) and \(2,\)"),
        (([constant], [x], [v]), r"no gradient requires grad: compute them with .*create_graph=True"),
    ]


@pytest.mark.parametrize("index", range(5))
def test_mismatched_arguments_raise(index):
    arguments, message = bad_arguments()[index]
    with pytest.raises(ValueError, match=message):
        hessian_vector_product(*arguments)
