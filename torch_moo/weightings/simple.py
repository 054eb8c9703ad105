r"""The two fixed rules, usable on the Gram matrix or on the loss values, and the Gram-space rules' shared checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from torch_moo._device import reads_are_free
from torch_moo._validation import all_finite, check_gram_shape
from torch_moo.functional._scale import binary_exponent, power_of_two
from torch_moo.weightings._base import GramWeighting, LossWeighting

__all__ = ["Constant", "Mean"]


def check_gram(gram: object) -> Tensor:
    """A floating-point square ``k x k`` tensor, ``k >= 1``, with finite entries.

    Finiteness is checked on the CPU only, where reading the flag is free; on an accelerator it
    would cost a host synchronisation per step, so a non-finite Gram matrix there gives
    non-finite weights instead.
    """
    gram = check_gram_shape(gram)
    if reads_are_free(gram) and not all_finite(gram):
        raise ValueError(f"gram must be finite, got {gram.tolist()}")
    return gram


def unit_gram(gram: Tensor) -> tuple[Tensor, Tensor]:
    r"""``(G / 2^e, e)``: the float64 Gram matrix scaled exactly by a power of two to a largest
    entry in :math:`[1/2, 1)` (any finite scale; a zero matrix stays zero), and the exponent
    :math:`e` (an int32 scalar on the device)."""
    exact = gram.detach().to(torch.float64)
    exponent = binary_exponent([exact])
    return exact * power_of_two(-exponent, exact), exponent


def check_weights(name: str, value: object) -> Tensor:
    """A non-empty, finite, 1-D float64 vector from a sequence or a tensor."""
    try:
        vector = torch.as_tensor(value, dtype=torch.float64).detach().clone()
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{name} must be a 1-D sequence of numbers, got {value!r}") from error
    if vector.dim() != 1 or vector.numel() < 1:
        raise ValueError(f"{name} must be a 1-D vector with at least one entry, got shape {tuple(vector.shape)}")
    if not torch.isfinite(vector).all():
        raise ValueError(f"{name} must be finite, got {vector.tolist()}")
    return vector


def preference(weights: Tensor | None, k: int, like: Tensor, name: str = "pref_vector") -> Tensor:
    """The given weights in ``like``'s dtype and device (their length must be ``k``); ``None``: :math:`1/k` each."""
    if weights is None:
        return torch.full((k,), 1.0 / k, dtype=like.dtype, device=like.device)
    if weights.numel() != k:
        raise ValueError(f"{name} has {weights.numel()} entries but there are k={k} objectives")
    return weights.to(like.device, like.dtype)


def _objectives(inputs: Tensor) -> int:
    """``k`` from a Gram matrix (checked) or a loss vector."""
    if not isinstance(inputs, Tensor):
        raise TypeError(f"gram (or losses) must be a tensor, got {type(inputs).__name__}")
    if inputs.dim() == 1:
        return inputs.shape[0]
    return check_gram(inputs).shape[0]


class Mean(GramWeighting, LossWeighting):
    r"""The mean of the objectives: :math:`w_i = 1/k`, as torchjd's ``MeanWeighting``.

    A Gram-space rule (``weighting(gram)``) and a loss-space one (``weighting(losses)``, no
    periodic update): only the number of objectives, the dtype and the device of the input
    count. Invariant to any rescaling.

    Example:
        >>> Mean()(torch.eye(4, dtype=torch.float64))
        tensor([0.2500, 0.2500, 0.2500, 0.2500], dtype=torch.float64)
    """

    def __init__(self) -> None:
        super().__init__(every=None)

    # Both shapes of rule: weighting(gram[, losses]) and weighting(losses); mypy sees only the first.
    def forward(self, inputs: Tensor, losses: Tensor | None = None) -> Tensor:  # type: ignore[override]
        return preference(None, _objectives(inputs), inputs)


class Constant(GramWeighting, LossWeighting):
    r"""Fixed weights :math:`w`, as torchjd's ``ConstantWeighting`` (any finite real entries).

    A Gram-space rule (``weighting(gram)``) and a loss-space one (``weighting(losses)``, no
    periodic update); the input gives the dtype and device, and its ``k`` must match. Invariant
    to any rescaling.

    Args:
        weights: the ``k`` weights, a 1-D sequence or tensor of finite numbers.

    Example:
        >>> Constant([1.0, 2.0])(torch.tensor([0.3, 0.7]))
        tensor([1., 2.])
    """

    weights: Tensor

    def __init__(self, weights: Sequence[float] | Tensor) -> None:
        super().__init__(every=None)
        self.register_buffer("weights", check_weights("weights", weights), persistent=False)

    def forward(self, inputs: Tensor, losses: Tensor | None = None) -> Tensor:  # type: ignore[override]
        return preference(self.weights, _objectives(inputs), inputs, "weights")

    def config(self) -> dict[str, Any]:
        return {**super().config(), "weights": self.weights.tolist()}
