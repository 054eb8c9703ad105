"""Exact power-of-two rescaling, so that sums of squares neither overflow nor flush to zero.

float32 squares overflow above about 1.8e19 and flush to zero below about 1e-19 (1e-23 with
subnormals), so a norm or a Gram matrix formed directly is infinite or zero for gradients that
losses scaled by 1e20 or 1e-30 produce. Multiplying by a power of two first is exact.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor


def binary_exponent(tensors: Sequence[Tensor]) -> Tensor:
    r"""The integer :math:`e` with :math:`2^{e-1} \le \max |x| < 2^e` over the entries of ``tensors``.

    Clamped to the dtype's normal exponents (:math:`\pm 125` for float32, whose largest values
    have :math:`e = 128`), so that :math:`2^{-e}` and the entries scaled by it stay normal
    numbers; 0 when there are no entries. An int32 scalar on the device, no host
    synchronisation; ``aminmax`` reads each tensor once, without an ``abs`` copy (on the CPU the
    infinity norm, one op fewer, took 5x as long on a 16 x 665k Jacobian). Non-finite entries give
    some exponent; scaled, they stay non-finite.
    """
    exponents = [torch.frexp(torch.stack(x.detach().aminmax()).abs().amax()).exponent for x in tensors if x.numel()]
    if not exponents:
        return torch.zeros((), dtype=torch.int32, device=tensors[0].device)
    limit = -math.frexp(torch.finfo(tensors[0].dtype).tiny)[1]
    return functools.reduce(torch.maximum, exponents).clamp(-limit, limit)


def power_of_two(exponent: Tensor, like: Tensor) -> Tensor:
    r""":math:`2^e` as a scalar of ``like``'s dtype and device (exact for the exponents of
    :func:`binary_exponent`); multiplying by it is one pass, where ``torch.ldexp`` on a whole tensor
    takes several."""
    return torch.ldexp(like.new_ones(()), exponent)


def vector_norm(vector: Tensor) -> Tensor:
    r""":math:`\|x\|_2 = 2^e \|2^{-e} x\|_2` with :math:`e` from :func:`binary_exponent`: finite and
    non-zero for every finite, non-zero ``x`` (``torch.linalg.vector_norm`` sums the squares as
    they are: 0 for float32 entries of 1e-30, infinite for 1e20)."""
    exponent = binary_exponent([vector])
    return torch.linalg.vector_norm(vector * power_of_two(-exponent, vector)) * power_of_two(exponent, vector)
