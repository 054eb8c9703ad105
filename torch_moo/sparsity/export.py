r"""Sparse export for inference: pruned ``nn.Linear`` layers as ``torch.sparse`` matrix products.

After sparse training most of a linear layer's weights are exact zeros, but ``nn.Linear`` still
multiplies by all of them. :func:`to_sparse` copies a model and swaps every sufficiently sparse
``nn.Linear`` for a :class:`SparseLinear`, whose weight is stored compressed and multiplied with
a sparse-dense product.

Why CSR by default: with the weight ``W`` in compressed-sparse-row form, ``y^T = W x^T`` is one
MKL sparse-dense product that reads each stored weight once; on the CPU it beats both the dense
layer and COO at 90% sparsity and above, and its advantage grows with sparsity. COO is much
slower still if its dense operand ``x^T`` is left a strided view instead of being copied to
row-major as :class:`SparseLinear` does. CSR only pays off at high sparsity, so pick
``min_sparsity`` accordingly: the timings and break-even points are in ``benchmarks/README.md``
("Sparse inference", from ``benchmarks/sparse_inference.py``).

Inference only: the sparse weight and the bias are buffers, not parameters, so they get no
gradient (the exported model has no parameters for them) and an optimizer never sees them.
Gradients still flow to the *input* (e.g. for saliency maps). CPU float32 and float64 are
supported; torch's CPU CSR kernels have no float16/bfloat16 product.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, cast

import torch
from torch import Tensor, nn

from torch_moo._validation import check_choice, check_real

__all__ = ["SparseLinear", "to_sparse"]

LAYOUTS = (torch.sparse_csr, torch.sparse_coo)


def _compress(weight: Tensor, layout: torch.layout) -> Tensor:
    """``weight`` (any layout) in ``layout``, keeping only its non-zero entries; COO coalesced."""
    with warnings.catch_warnings():
        # Torch warns once per process that CSR is "in beta"; the caller asked for CSR explicitly.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        if weight.layout != torch.strided:
            weight = weight.to_dense()
        return weight.to_sparse_csr() if layout == torch.sparse_csr else weight.to_sparse_coo().coalesce()


class SparseLinear(nn.Module):
    r"""Inference-only ``nn.Linear`` with its weight in a ``torch.sparse`` layout.

    Computes :math:`y = x W^T + b` for input of shape ``(*, in_features)`` as
    ``addmm(b[:, None], W, x^T)^T``: the sparse weight on the left of a sparse-dense product,
    the bias added inside it. Of the forms measured on CPU (``torch.sparse.mm(W, x.T).T + b``,
    ``addmm(b, x, W.T)`` with ``W.T`` as CSC, ``F.linear(x, W, b)``, ``W^T`` stored as CSR) this
    was the fastest (``F.linear`` with a CSR weight also fails under ``torch.inference_mode``).
    For a 2-D batch the output is therefore a transposed (column-major) view with the dense
    layer's values (making it contiguous would cost a copy); elementwise ops and a following
    :class:`SparseLinear` take it as it is (the next ``x^T`` is then contiguous), but call
    ``.contiguous()`` before ``.view``. A COO weight gets ``x^T`` copied to row-major first:
    torch's COO product is many times slower on a strided operand.

    ``weight`` (sparse, ``(out_features, in_features)``) and ``bias`` (dense or ``None``) are
    buffers: ``.to(dtype/device)``, ``state_dict``, ``torch.save``/``torch.load`` (also with
    ``weights_only=True``) and :func:`copy.deepcopy` work. ``load_state_dict`` accepts a weight
    in any layout, dense included (so an ``nn.Linear`` checkpoint loads), and recompresses it
    into this module's layout; torch's own in-place copy would fail for CSR whenever the
    number of non-zeros differs. They carry no gradient; gradients flow to the input only.

    Args:
        weight: the ``(out_features, in_features)`` weight, in ``torch.sparse_csr`` or
            ``torch.sparse_coo`` layout.
        bias: the ``(out_features,)`` dense bias, or ``None``.

    Prefer :meth:`from_dense` (or :func:`to_sparse` for a whole model) to calling this directly.

    Example:
        >>> linear = nn.Linear(4, 3)
        >>> with torch.no_grad():
        ...     linear.weight[:, 1:] = 0.0  # 75% of the weights are zero
        >>> sparse = SparseLinear.from_dense(linear)
        >>> sparse
        SparseLinear(in_features=4, out_features=3, bias=True, layout=torch.sparse_csr, density=0.250)
        >>> x = torch.randn(5, 4)
        >>> torch.allclose(sparse(x), linear(x), atol=1e-6)
        True
    """

    weight: Tensor
    bias: Tensor | None

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(weight, Tensor) or weight.layout not in LAYOUTS or weight.dim() != 2:
            got = type(weight).__name__
            if isinstance(weight, Tensor):
                got = f"{weight.layout} tensor of shape {tuple(weight.shape)}"
            raise TypeError(f"weight must be a 2-D torch.sparse_csr or torch.sparse_coo tensor, got {got}")
        if bias is not None and (
            not isinstance(bias, Tensor) or bias.layout != torch.strided or bias.shape != (weight.shape[0],)
        ):
            got = f"shape {tuple(bias.shape)}, {bias.layout}" if isinstance(bias, Tensor) else type(bias).__name__
            raise ValueError(f"bias must be a dense tensor of shape ({weight.shape[0]},) or None, got {got}")
        self.out_features, self.in_features = weight.shape
        weight = weight.detach()
        self.register_buffer("weight", weight.coalesce() if weight.layout == torch.sparse_coo else weight)
        self.register_buffer("bias", None if bias is None else bias.detach())

    @classmethod
    def from_dense(cls, linear: nn.Linear, layout: torch.layout = torch.sparse_csr) -> SparseLinear:
        """A :class:`SparseLinear` with ``linear``'s weights (exact zeros dropped) and bias.

        Args:
            linear: the layer to convert; it is not modified.
            layout: ``torch.sparse_csr`` (default, fastest on CPU) or ``torch.sparse_coo``.

        Returns:
            The sparse layer, on ``linear``'s device and dtype, in ``linear``'s train/eval mode.

        Raises:
            TypeError: ``linear`` is not an ``nn.Linear``.
            ValueError: ``layout`` is not one of the two supported layouts.

        Example:
            >>> linear = nn.Linear(3, 2, bias=False)
            >>> with torch.no_grad():
            ...     linear.weight.copy_(torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]]))
            Parameter containing:
            tensor([[0., 2., 0.],
                    [1., 0., 0.]], requires_grad=True)
            >>> sparse = SparseLinear.from_dense(linear, layout=torch.sparse_coo)
            >>> sparse.weight._nnz(), sparse.density
            (2, 0.3333333333333333)
            >>> sparse(torch.tensor([[1.0, 1.0, 1.0]]))
            tensor([[2., 1.]])
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        check_choice("layout", layout, LAYOUTS)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        module = cls(_compress(linear.weight.detach(), layout), bias)
        return module.train(linear.training)

    @property
    def layout(self) -> torch.layout:
        """The weight's sparse layout."""
        return self.weight.layout

    @property
    def density(self) -> float:
        """Fraction of the weight's entries that are stored (non-zero): ``1 - sparsity``."""
        return self.weight._nnz() / max(self.weight.shape.numel(), 1)

    def forward(self, input: Tensor) -> Tensor:
        """``input @ weight.T + bias`` for ``input`` of shape ``(*, in_features)``."""
        buffers = self._buffers  # one dict, instead of nn.Module.__getattr__ per buffer (B=1 overhead)
        weight, bias, shape = cast(Tensor, buffers["weight"]), buffers["bias"], input.shape
        if not shape or shape[-1] != self.in_features:
            raise ValueError(
                f"input must have in_features={self.in_features} entries in its last dimension, "
                f"got shape {tuple(shape)}"
            )
        x_t = (input if len(shape) == 2 else input.reshape(-1, self.in_features)).T  # (in, N), no copy
        if weight.layout == torch.sparse_coo:
            x_t = x_t.contiguous()  # torch's COO product is many times slower on a column-major operand
        y_t = torch.mm(weight, x_t) if bias is None else torch.addmm(bias.unsqueeze(1), weight, x_t)
        return y_t.T if len(shape) == 2 else y_t.T.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"layout={self.layout}, density={self.density:.3f}"
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> SparseLinear:
        # Tensor.__deepcopy__ fails for sparse CSR ("Cannot access storage of SparseCsrTensorImpl");
        # clone does not. Seed the memo with a clone, then copy the rest as usual.
        if id(self.weight) not in memo:
            memo[id(self.weight)] = self.weight.clone()
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Recompress the incoming weight (any layout) to ours and make it our buffer, so that
        # the default in-place copy that follows sees equal sparsity structures.
        key = prefix + "weight"
        incoming = state_dict.get(key)
        if isinstance(incoming, Tensor) and incoming.shape == self.weight.shape:
            weight = _compress(incoming.detach().to(self.weight.device, self.weight.dtype), self.layout)
            self.weight = state_dict[key] = weight
        super()._load_from_state_dict(state_dict, prefix, *args)


def to_sparse(model: nn.Module, *, layout: torch.layout = torch.sparse_csr, min_sparsity: float = 0.9) -> nn.Module:
    """A copy of ``model`` with its sparse ``nn.Linear`` layers as :class:`SparseLinear`, for inference.

    Every module of type exactly ``nn.Linear`` whose weight has at least ``min_sparsity`` of its
    entries exactly zero is replaced; all other modules (convolutions, normalisation, denser
    linear layers, subclasses of ``nn.Linear`` such as ``nn.MultiheadAttention``'s
    ``out_proj``, whose owner reads ``.weight`` directly) stay as they are. A linear layer
    registered in several places is replaced by one shared :class:`SparseLinear`. ``model``
    itself is not modified; the copy keeps its train/eval mode, but its sparse layers are
    inference-only: they have no parameters, so no gradients (gradients still reach inputs).

    Args:
        model: the model to export.
        layout: ``torch.sparse_csr`` (default; the fastest on CPU, see the module docstring)
            or ``torch.sparse_coo``.
        min_sparsity: fraction in ``[0, 1]`` of exact zeros a weight needs to be replaced. On
            CPU a CSR layer is only faster than the dense one at high sparsity (break-even
            points in ``benchmarks/README.md``, "Sparse inference"), hence the default 0.9;
            lower values replace layers that run slower.

    Returns:
        The exported copy (a :class:`SparseLinear` if ``model`` is itself a sparse enough
        ``nn.Linear``).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or ``min_sparsity`` is not a real number.
        ValueError: ``layout`` is not supported, or ``min_sparsity`` is outside ``[0, 1]``.

    Example:
        >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> with torch.no_grad():
        ...     model[0].weight[:, 2:] = 0.0  # 75% sparse; model[2] stays dense
        >>> exported = to_sparse(model, min_sparsity=0.7)
        >>> exported
        Sequential(
          (0): SparseLinear(in_features=8, out_features=8, bias=True, layout=torch.sparse_csr, density=0.250)
          (1): ReLU()
          (2): Linear(in_features=8, out_features=2, bias=True)
        )
        >>> x = torch.randn(4, 8)
        >>> torch.allclose(exported(x), model(x), atol=1e-6)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_choice("layout", layout, LAYOUTS)
    min_sparsity = check_real("min_sparsity", min_sparsity, minimum=0.0)
    if min_sparsity > 1.0:
        raise ValueError(f"min_sparsity must be <= 1.0 (a fraction of the weights), got {min_sparsity}")

    replacements: dict[int, nn.Module] = {}  # id(linear) -> its replacement, so shared layers stay shared

    def convert(module: nn.Module) -> nn.Module:
        if type(module) is not nn.Linear or module.weight.numel() == 0:
            return module
        if id(module) not in replacements:
            weight = module.weight.detach()
            sparsity = (weight == 0).sum().item() / weight.numel()
            replacements[id(module)] = SparseLinear.from_dense(module, layout) if sparsity >= min_sparsity else module
        return replacements[id(module)]

    exported = copy.deepcopy(model)
    for parent in list(exported.modules()):
        for name, child in list(parent._modules.items()):
            if child is not None:
                parent._modules[name] = convert(child)
    return convert(exported)
