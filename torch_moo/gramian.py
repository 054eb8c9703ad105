r"""The Gram matrix of the objectives' gradients over shared modules, without their ``k x P`` Jacobian.

For a linear layer :math:`y = a W^\top + b` met by the rows :math:`a_n` of its input :math:`A`
(:math:`N \times d_{in}`; a trailing column of ones stands for the bias) and the gradients
:math:`\delta_{i,n}` of objective :math:`i` at its output (:math:`\Delta_i`, :math:`N \times
d_{out}`), the gradient of objective :math:`i` is :math:`g_i = \Delta_i^\top A`, so

.. math::

    \langle g_i, g_j \rangle = \langle \Delta_i^\top A, \Delta_j^\top A \rangle
    = \operatorname{tr}\big(\Delta_i^\top (A A^\top) \Delta_j\big),

a sum over the layers (Algorithm 3 of Quinton & Rey, *Jacobian Descent for Multi-Objective
Optimization*, 2024, which torchjd's ``autogram.Engine`` implements; the :math:`A A^\top` form is
the "ghost norm" of Li et al., *Large Language Models Can Be Strong Differentially Private
Learners*, ICLR 2022). The :math:`\Delta_i` come from one backward pass per objective that stops
at the layers' outputs and forms no parameter gradient; the update :math:`J^\top w` is then one
ordinary ``losses.backward(w)``.

Measured (CPU, one thread's CPU time, torch 2.13, float32, median of 7; peak: the most bytes of
tensors alive at once during the step, forward included): one step (forward, :math:`G`, min-norm
weights, :math:`J^\top w` into ``.grad``) with the Jacobian path (``k`` ``autograd.grad`` +
``cat`` + :math:`J J^\top` + :math:`J^\top w`), this engine, and torchjd 0.18's
``Engine(trunk, batch_dim=None)``; :math:`r = \sum_\text{layers} \operatorname{numel}(y) / P`
(the layers' outputs in one step over the trunk's parameters):

========================================  ===  =================  =================  =================
trunk (P, r)                                k  Jacobian           this engine        torchjd
========================================  ===  =================  =================  =================
MLP 784-512-512, batch 256 (665k, 0.4)      2  20 ms, 16 MiB      18 ms, 8 MiB       27 ms, 10 MiB
                                            4  32 ms, 26 MiB      26 ms, 12 MiB      37 ms, 17 MiB
                                            8  58 ms, 46 MiB      39 ms, 20 MiB      67 ms, 32 MiB
                                           16  166 ms, 87 MiB     72 ms, 36 MiB      174 ms, 61 MiB
2048-2048-2048, batch 16 (8.4M, 0.008)      2  146 ms, 192 MiB    33 ms, 33 MiB      107 ms, 81 MiB
                                            4  237 ms, 321 MiB    30 ms, 33 MiB      178 ms, 145 MiB
                                            8  473 ms, 577 MiB    47 ms, 33 MiB      365 ms, 274 MiB
                                           16  858 ms, 1090 MiB   67 ms, 34 MiB      632 ms, 532 MiB
MLP 784-512-512, batch 1024 (665k, 1.6)     4  98 ms, 27 MiB      116 ms, 42 MiB     119 ms, 33 MiB
                                           16  449 ms, 89 MiB     395 ms, 133 MiB    961 ms, 106 MiB
MLP 784-512-512, batch 2048 (665k, 3.2)     4  169 ms, 29 MiB     228 ms, 76 MiB     241 ms, 66 MiB
                                           16  850 ms, 91 MiB     752 ms, 240 MiB    1915 ms, 211 MiB
benchmark CNN, batch 256 (206k, 24)         2  108 ms, 58 MiB     212 ms, 121 MiB    177 ms, 119 MiB
                                            8  258 ms, 63 MiB     605 ms, 379 MiB    663 ms, 321 MiB
========================================  ===  =================  =================  =================

The engine holds the ``k`` objectives' output gradients of every layer (:math:`k r P` numbers)
where the Jacobian path holds :math:`k P`, and it saves the ``k`` weight-gradient products and the
:math:`k^2 P` of :math:`J J^\top` for one more backward pass. **Rule:** use the engine when
:math:`r \le 1`, i.e. ``batch * sum(layer output sizes per example) <= P``: for an MLP, a batch
below the layers' mean fan-in (there it was 1.1 to 2.3 times faster with 2 to 2.4 times less
memory at ``r = 0.4``, and 4 to 13 times faster with 6 to 32 times less at ``r = 0.008``); the
Jacobian path otherwise, and for convolutional trunks (``r`` in the tens: twice as slow, 2 to 6
times the memory). Between ``r = 1`` and 3 the engine is still faster at ``k = 16`` but takes
1.5 to 2.6 times the memory. ``k`` hardly moves the threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.nn.grad import conv1d_weight, conv2d_weight, conv3d_weight
from torch.utils.hooks import RemovableHandle

from torch_moo.engine import objective_roots
from torch_moo.functional._scale import binary_exponent, power_of_two
from torch_moo.functional.mgda import _gram_float64, _scale_to_unit_, _unit_gram

__all__ = ["GramianEngine"]

_CONV_WEIGHT: dict[type[nn.Module], Callable[..., Tensor]] = {
    nn.Conv1d: conv1d_weight,
    nn.Conv2d: conv2d_weight,
    nn.Conv3d: conv3d_weight,
}


class _Call:
    """One recorded forward call of a hooked module: its input, that input's version, its output's edge and size."""

    __slots__ = ("edge", "input", "size", "version")

    def __init__(self, input: Tensor, output: Tensor) -> None:
        self.input, self.version, self.edge, self.size = (
            input,
            input._version,
            get_gradient_edge(output),
            output.numel(),
        )


class GramianEngine:
    r"""The Gram matrix :math:`G = J J^\top` of ``k`` objectives' gradients over the parameters of ``modules``.

    ``engine.gram(losses)`` returns :math:`G` (``k x k``, float64, at its true scale) from the
    activations that forward hooks record and the gradients at the layers' outputs (one backward
    pass per objective, which stops there and forms no parameter gradient); the graph is kept,
    so that ``losses.backward(w)`` then writes :math:`J^\top w` into ``.grad``
    (and :math:`\sum_i w_i \nabla L_i` into any other parameter, such as task heads):

    .. math::

        G_{ij} = \sum_{\text{layers}} \operatorname{tr}\big(\Delta_i^\top (A A^\top) \Delta_j\big)
        \;\text{or}\; \langle \Delta_i^\top A, \Delta_j^\top A \rangle,

    for each :class:`~torch.nn.Linear` (any leading dimensions; calls of one layer are stacked,
    so a layer used twice gets its cross terms), whichever of the two costs fewer operations
    (the first when the rows :math:`N` are fewer than about the layer's width: no
    :math:`k \times d_{out} \times d_{in}` buffer); each :class:`~torch.nn.Conv1d`, ``Conv2d``
    and ``Conv3d`` with numeric padding and ``padding_mode="zeros"`` gets its per-objective
    weight gradients from ``torch.nn.grad.conv*d_weight`` (one layer at a time). The parameters of
    every other module (e.g. :class:`~torch.nn.LayerNorm`), of a supported module that
    shares a parameter with another module or has one frozen, and of a supported module that
    recorded no call (its weights used functionally) get their exact per-objective gradients
    from the same backward passes. Each factor is scaled by an exact power of two
    (:math:`2^{-e}`, :func:`~torch_moo.functional._scale.binary_exponent`) and the products
    rescaled in float64, so float32 losses at any finite scale give a finite Gram matrix, equal
    to the Jacobian's up to rounding.

    Hooks record a module's input and the edge of its output at each forward call made with
    gradients enabled; :meth:`gram` uses and clears them (:meth:`clear` drops them unused).
    A module must be *called* for its parameters to be seen as a layer: a parameter used both
    by its module's call and directly by other code gets only the call's share.

    Args:
        modules: the modules whose parameters are shared by the objectives (a trunk); the
            parameters that require grad, each once, make :attr:`parameters`.

    Raises:
        TypeError: an argument is not an :class:`~torch.nn.Module`.
        ValueError: no module is given, or they hold no parameter that requires grad.

    Example:
        >>> trunk, heads = torch.nn.Linear(4, 8), torch.nn.ModuleList(torch.nn.Linear(8, 1) for _ in range(2))
        >>> engine = GramianEngine(trunk)
        >>> z = trunk(torch.randn(16, 4)).relu()
        >>> losses = torch.stack([head(z).pow(2).mean() for head in heads])
        >>> gram = engine.gram(losses)
        >>> rows = [torch.autograd.grad(loss, engine.parameters, retain_graph=True) for loss in losses]
        >>> jacobian = torch.stack([torch.cat([g.flatten() for g in row]) for row in rows])
        >>> torch.allclose(gram, (jacobian @ jacobian.T).double(), rtol=1e-5)
        True
        >>> losses.backward(torch.tensor([0.5, 0.5]))  # .grad: J^T w over the trunk
        >>> engine.remove()
    """

    def __init__(self, *modules: nn.Module) -> None:
        if not modules:
            raise ValueError("modules must hold at least one nn.Module (the shared trunk), got none")
        for index, module in enumerate(modules):
            if not isinstance(module, nn.Module):
                raise TypeError(f"modules[{index}] must be an nn.Module, got {type(module).__name__}")
        leaves = list({id(m): m for module in modules for m in module.modules()}.values())
        owners: dict[int, int] = {}
        for module in leaves:
            for p in module.parameters(recurse=False):
                owners[id(p)] = owners.get(id(p), 0) + 1
        self._layers: dict[nn.Module, list[_Call]] = {}
        self._others: list[Tensor] = []
        self._handles: list[RemovableHandle] = []
        for module in leaves:
            own = list(module.parameters(recurse=False))
            if _supported(module) and all(p.requires_grad and owners[id(p)] == 1 for p in own):
                self._layers[module] = []
                self._handles.append(module.register_forward_hook(self._record))
            else:
                self._others += [p for p in own if p.requires_grad]
        self._others = list({id(p): p for p in self._others}.values())
        self.parameters: tuple[Tensor, ...] = (*(p for m in self._layers for p in m.parameters()), *self._others)
        """The parameters the Gram matrix is over: the layers' (in hook order), then the others."""
        if not self.parameters:
            raise ValueError("modules hold no parameter that requires grad")
        self._size = sum(p.numel() for p in self.parameters)

    def _record(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if torch.is_grad_enabled() and isinstance(output, Tensor) and output.requires_grad:
            self._layers[module].append(_Call(args[0], output))

    def gram(self, losses: Tensor) -> Tensor:
        r"""The ``k x k`` float64 Gram matrix of the gradients of ``losses`` over :attr:`parameters`.

        One backward pass of the ``k`` objectives at once (their graph is retained), then one
        product per layer; the recorded calls are cleared. ``losses`` must come from forward
        calls made since the last :meth:`gram` (or :meth:`clear`); a call that does not lead to
        ``losses`` adds nothing.

        Raises:
            TypeError: ``losses`` is not a floating-point tensor.
            ValueError: ``losses`` is not a non-empty 1-D tensor that requires grad.
            RuntimeError: a layer's input was modified in place after its call.
        """
        if not isinstance(losses, Tensor) or not losses.is_floating_point():
            raise TypeError(f"losses must be a floating-point tensor, got {getattr(losses, 'dtype', type(losses))}")
        if losses.dim() != 1 or losses.numel() < 1 or not losses.requires_grad:
            raise ValueError(
                f"losses must be a non-empty 1-D tensor that requires grad (one loss per objective), "
                f"got shape {tuple(losses.shape)} with requires_grad={losses.requires_grad}"
            )
        try:
            return self._gram(losses)
        finally:
            self.clear()

    def _gram(self, losses: Tensor) -> Tensor:
        k = losses.numel()
        gram = torch.zeros(k, k, dtype=torch.float64, device=losses.device)
        # A layer with no recorded call may have had its weights used directly: count them exactly.
        others = self._others + [p for m, calls in self._layers.items() if not calls for p in m.parameters()]
        calls = [(m, call) for m, recorded in self._layers.items() for call in recorded]
        for module, call in calls:
            if call.input._version != call.version:
                raise RuntimeError(
                    f"the input of {module!r} was modified in place after its forward call; "
                    "the engine needs the activations the layer saw (avoid inplace=True before it)"
                )
        inputs = [call.edge for _, call in calls] + [get_gradient_edge(p) for p in others]
        if not inputs:
            return gram
        grads = _objective_gradients(losses, inputs)
        reached: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {}
        for (module, call), delta in zip(calls, grads):
            if delta is not None:
                reached.setdefault(module, []).append((call.input, delta))
        for module, pairs in reached.items():
            gram += (_linear_gram if isinstance(module, nn.Linear) else _conv_gram)(module, pairs)
        blocks = [g.reshape(k, -1) for g in grads[len(calls) :] if g is not None]
        if blocks:
            gram += _gram_float64(blocks)
        return gram

    def output_ratio(self) -> float:
        r""":math:`r`, the recorded calls' output entries over the number of entries of :attr:`parameters`:
        the engine is the cheaper path when :math:`r \le 1` (see the module's measurements)."""
        outputs = sum(call.size for calls in self._layers.values() for call in calls)
        return outputs / self._size

    def clear(self) -> None:
        """Drop the recorded calls (and the activations they hold) without using them."""
        for calls in self._layers.values():
            calls.clear()

    def remove(self) -> None:
        """Remove the hooks; the engine records nothing more."""
        for handle in self._handles:
            handle.remove()
        self.clear()


def _objective_gradients(losses: Tensor, inputs: list[GradientEdge]) -> list[Tensor | None]:
    """Each input's gradients, stacked over the objectives (``k x ...``; ``None`` where none reaches it).

    One backward pass per objective, from where it enters the stack (:func:`~torch_moo.engine.objective_roots`)
    to ``inputs``: no parameter gradient is formed, and a pass goes through its own task head only.
    One batched pass (``is_grads_batched=True``, a ``vmap``) was slower: it carries all ``k``
    gradients through every head and sums ``k`` heads' ``k x N x d`` gradients at the trunk's
    output (the 784-512-512 MLP, batch 1024, ``k = 16``: 946 ms per step against 403 ms).
    """
    roots = objective_roots(losses)
    stacks: list[Tensor | None] = [None] * len(inputs)
    for i, root in enumerate(roots):
        if root is None:
            continue
        grads = torch.autograd.grad(root, inputs, losses.new_ones(()), retain_graph=True, allow_unused=True)
        for j, grad in enumerate(grads):
            if grad is not None:  # into one k x ... buffer per input: a stack of the rows would double the peak
                stack = stacks[j]
                if stack is None:
                    stacks[j] = stack = grad.new_zeros(len(roots), *grad.shape)
                stack[i] = grad
    return stacks


def _supported(module: nn.Module) -> bool:
    """Whether the module's gradients are formed from its activations (exact types: a subclass may
    call its weights otherwise, as ``MultiheadAttention``'s ``out_proj`` does)."""
    if type(module) is nn.Linear:
        return True
    return (
        type(module) in _CONV_WEIGHT
        and getattr(module, "padding_mode", None) == "zeros"
        and isinstance(getattr(module, "padding", None), tuple)
    )


def _unit_scaled(tensors: list[Tensor], dtype: torch.dtype, dim: int) -> tuple[Tensor, Tensor]:
    """``tensors`` in ``dtype``, joined along ``dim`` and scaled below 1 by :math:`2^{-e}` (exact), and :math:`e`."""
    tensors = [t.detach().to(dtype) for t in tensors]
    exponent = binary_exponent(tensors)
    joined = torch.cat(tensors, dim) if len(tensors) > 1 else tensors[0]
    return joined * power_of_two(-exponent, joined), exponent


def _compute_dtype(pairs: list[tuple[Tensor, Tensor]]) -> torch.dtype:
    """float32, or float64 when a factor is float64 (half-precision factors are widened)."""
    return torch.float64 if any(torch.float64 in (a.dtype, d.dtype) for a, d in pairs) else torch.float32


def _linear_gram(module: nn.Module, pairs: list[tuple[Tensor, Tensor]]) -> Tensor:
    r"""A linear layer's share of :math:`G` from its calls' inputs and batched output gradients."""
    k = pairs[0][1].shape[0]
    dtype = _compute_dtype(pairs)
    rows = [a.reshape(-1, a.shape[-1]) for a, _ in pairs]
    if module.bias is not None:
        rows = [torch.cat((a, a.new_ones(a.shape[0], 1)), 1) for a in rows]
    a, a_exponent = _unit_scaled(rows, dtype, 0)  # N x (d_in + 1)
    deltas = [delta.reshape(k, -1, delta.shape[-1]) for _, delta in pairs]
    d, d_exponent = _unit_scaled(deltas, dtype, 1)  # k x N x d_out
    n, d_in, d_out = a.shape[0], a.shape[1], d.shape[2]
    exponent = a_exponent + d_exponent
    if k * n * d_out * d_in + k * k * d_out * d_in <= n * n * d_in + k * n * n * d_out + k * k * n * d_out:
        jacobian = torch.matmul(d.transpose(1, 2), a).reshape(k, -1)  # the layer's k x P_l block
        return _unit_gram([jacobian], _scale_to_unit_(jacobian) + exponent)
    mixed = torch.matmul(a @ a.T, d).reshape(k, -1)  # (A A^T) Delta_j, k x N d_out
    unit = d.reshape(k, -1) @ mixed.T
    return torch.ldexp(((unit + unit.T) / 2).to(torch.float64), 2 * exponent)


def _conv_gram(module: nn.Module, pairs: list[tuple[Tensor, Tensor]]) -> Tensor:
    r"""A convolution's share of :math:`G` from per-objective weight (and bias) gradients, call by call."""
    k = pairs[0][1].shape[0]
    dtype = _compute_dtype(pairs)
    inputs = [a.detach().to(dtype) for a, _ in pairs]
    if module.bias is not None:  # the bias's "input" is 1: scale the inputs below 1 with it
        inputs.append(inputs[0].new_ones(()))
    a_exponent = binary_exponent(inputs)
    d_exponent = binary_exponent([delta.detach().to(dtype) for _, delta in pairs])
    a_scale, d_scale = power_of_two(-a_exponent, inputs[0]), power_of_two(-d_exponent, inputs[0])
    # conv*d_weight(input, weight_size, grad_output, stride, padding, dilation, groups), batched over k
    weight_gradient = torch.vmap(_CONV_WEIGHT[type(module)], in_dims=(None, None, 0, None, None, None, None))
    options = (module.stride, module.padding, module.dilation, module.groups)
    pieces: list[Tensor] = []
    for a, delta in pairs:
        a, delta = a.detach().to(dtype) * a_scale, delta.detach().to(dtype) * d_scale
        piece = weight_gradient(a, module.weight.shape, delta, *options).reshape(k, -1)
        if module.bias is not None:
            piece = torch.cat((piece, delta.sum([1, *range(3, delta.dim())]) * a_scale), 1)
        pieces.append(piece)
    jacobian = torch.stack(pieces).sum(0) if len(pieces) > 1 else pieces[0]
    return _unit_gram([jacobian], _scale_to_unit_(jacobian) + a_exponent + d_exponent)
