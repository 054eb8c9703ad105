"""Where a weight keeps its output and input units (neurons, channels), for structured sparsity.

``nn.Linear`` and ``nn.ConvNd`` weights are laid out ``(out, in / groups, *kernel)``;
``nn.ConvTransposeNd`` weights ``(in, out / groups, *kernel)`` and ``nn.Embedding`` tables
``(num_embeddings, embedding_dim)``, a lookup being a linear map from the one-hot index, so
their outputs lie along dimension 1. With ``groups`` > 1 the channels along dimension 1 are
interleaved: channel ``h * B + j`` (``B`` = ``shape[1]``) is slice ``j`` of the rows of group ``h``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["Layout", "DENSE", "parameter_layouts", "unit_axis", "unit_count", "units_first", "expand_units"]


class Layout(NamedTuple):
    """``outputs``: the dimension (0 or 1) that indexes the output units, the other one the inputs;
    ``groups``: the convolution's groups."""

    outputs: int = 0
    groups: int = 1


DENSE = Layout()
"""The layout of ``nn.Linear`` and ungrouped convolution weights, assumed for a bare tensor."""

_TRANSPOSED = (nn.modules.conv._ConvTransposeNd, nn.Embedding, nn.EmbeddingBag)


def parameter_layouts(module: nn.Module) -> dict[int, tuple[Layout, str]]:
    """``id(weight) -> (layout, owner's name)`` for the weights of ``module``'s convolutions, transposed
    convolutions and embeddings (every other parameter has :data:`DENSE`).

    Raises:
        ValueError: a weight shared by two modules that lay it out differently (an embedding tied
            to an output layer): its rows and columns are ambiguous.
    """
    layouts: dict[int, tuple[Layout, str]] = {}
    for name, child in module.named_modules():
        weight = getattr(child, "weight", None)
        if not isinstance(weight, Tensor):
            continue
        if isinstance(child, _TRANSPOSED):
            layout = Layout(1, getattr(child, "groups", 1))
        elif isinstance(child, nn.modules.conv._ConvNd):
            layout = Layout(0, child.groups)
        else:
            layout = DENSE
        previous = layouts.setdefault(id(weight), (layout, name or type(child).__name__))
        if previous[0] != layout:
            raise ValueError(
                f"the weight of {previous[1]!r} is shared with {name!r}, which lays it out differently "
                f"(outputs along dim {previous[0].outputs} vs {layout.outputs}): its rows and columns are ambiguous"
            )
    return layouts


def unit_axis(structure: str, layout: Layout) -> int:
    """The dimension whose slices are the units: ``"row"`` the outputs, ``"column"`` the inputs."""
    return layout.outputs if structure == "row" else 1 - layout.outputs


def unit_count(shape: torch.Size, structure: str, layout: Layout = DENSE) -> int:
    """The number of units a tensor of ``shape`` has under ``structure`` (``"element"``, ``"row"``, ``"column"``)."""
    if structure == "element":
        return math.prod(shape)
    axis = unit_axis(structure, layout)
    return shape[0] if axis == 0 else shape[1] * layout.groups


def units_first(tensor: Tensor, axis: int, groups: int = 1) -> Tensor:
    """``tensor`` as a ``(units, rest)`` matrix whose row ``u`` holds unit ``u``'s entries along ``axis``
    (0 or 1), the groups' channels along dimension 1 numbered as the module numbers them."""
    if axis == 0:
        return tensor.flatten(1) if tensor.dim() > 1 else tensor.unsqueeze(1)
    # (g*A, B, *k) -> (g, A, B, *k) -> (g, B, A, *k) -> (g*B, A*prod(k))
    return tensor.unflatten(0, (groups, -1)).transpose(1, 2).flatten(0, 1).flatten(1)


def expand_units(units: Tensor, shape: torch.Size, axis: int, groups: int = 1) -> Tensor:
    """A per-unit tensor (mask or score) broadcast to the weight's ``shape``; the inverse of :func:`units_first`."""
    trailing = [1] * (len(shape) - 2)
    if axis == 0:
        return units.view(-1, 1, *trailing).expand(shape)
    rows, cols = shape[0] // groups, shape[1]
    return units.view(groups, 1, cols, *trailing).expand(groups, rows, *shape[1:]).flatten(0, 1)
