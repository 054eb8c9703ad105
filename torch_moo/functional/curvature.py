r"""Curvature through automatic differentiation: Hessian-vector products without the Hessian.

Pearlmutter, *Fast exact multiplication by the Hessian* (Neural Computation, 1994).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["hessian_vector_product"]


def hessian_vector_product(
    gradients: Sequence[Tensor],
    inputs: Sequence[Tensor],
    vector: Sequence[Tensor],
    *,
    retain_graph: bool = True,
) -> tuple[Tensor, ...]:
    r"""The product :math:`H v` of the Hessian of a scalar :math:`f` with a vector, by one backward.

    .. math::

        H v = \nabla_x \langle \nabla_x f(x), v \rangle,

    with :math:`v` held constant (Pearlmutter 1994): a single backward through the graph of the
    gradient, seeded with :math:`v` (the vector-Jacobian product of :math:`\nabla_x f`, so no
    inner product is formed), at a small constant multiple of the cost of a gradient, and no
    :math:`n \times n` matrix. The gradient must have been computed with ``create_graph=True``; an entry of it
    that does not require grad is a constant (its rows of :math:`H` are zero), and an input it
    does not depend on gets zeros. The result is a constant (it has no graph of its own).

    Args:
        gradients: :math:`\nabla_x f`, one tensor per input, from
            ``torch.autograd.grad(f, inputs, create_graph=True)``.
        inputs: the tensors :math:`x` the gradient was taken with respect to.
        vector: :math:`v`, one tensor per input, in its shape.
        retain_graph: keep the gradient's graph for more products (as for a Krylov solver);
            ``False`` frees it.

    Returns:
        :math:`H v`, one tensor per input, in its shape.

    Raises:
        ValueError: the three sequences differ in length or a gradient or vector differs in
            shape from its input, or no gradient requires grad (computed without
            ``create_graph=True``).

    Example:
        >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> (gradient,) = torch.autograd.grad((x**3).sum(), [x], create_graph=True)
        >>> hessian_vector_product([gradient], [x], [torch.tensor([1.0, 1.0])])  # diag(6 x) v
        (tensor([ 6., 12.]),)
    """
    gradients, inputs, vector = tuple(gradients), tuple(inputs), tuple(vector)
    if not len(gradients) == len(inputs) == len(vector):
        raise ValueError(
            f"gradients, inputs and vector must have one tensor per input, got lengths "
            f"{len(gradients)}, {len(inputs)} and {len(vector)}"
        )
    for i, (gradient, x, v) in enumerate(zip(gradients, inputs, vector)):
        if gradient.shape != x.shape or v.shape != x.shape:
            raise ValueError(
                f"gradients[{i}] and vector[{i}] must have the shape of inputs[{i}], {tuple(x.shape)}; "
                f"got {tuple(gradient.shape)} and {tuple(v.shape)}"
            )
    # <grad f, v> differentiated is the vector-Jacobian product of grad f with v: v seeds the backward
    # pass directly (grad_outputs), without forming the inner product (two ops per input, a stack, a sum)
    pairs = [(gradient, v.detach()) for gradient, v in zip(gradients, vector) if gradient.requires_grad]
    if not pairs:
        raise ValueError("no gradient requires grad: compute them with torch.autograd.grad(..., create_graph=True)")
    outputs, seeds = zip(*pairs)
    return torch.autograd.grad(
        outputs, inputs, grad_outputs=seeds, retain_graph=retain_graph, allow_unused=True, materialize_grads=True
    )
