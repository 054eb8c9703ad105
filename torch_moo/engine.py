r"""The Jacobian engine: the objectives' gradients, their Gram matrix, and the combination written into ``.grad``.

One module for the autograd plumbing of every gradient-space method. Given the loss vector, a
``weigh`` callable (the float64 Gram matrix :math:`G = J J^\top` at its true scale, and the
gradients' dtype, to the weights :math:`w`) and the parameters or the shared representation, it
writes :math:`J^\top w` where the method needs it:

* :func:`combine_parameters`, the full mode: one ``torch.autograd.grad`` per objective over the
  parameters; a parameter that two or more objectives reach is *shared* and receives
  :math:`J^\top w` over the shared parameters, one that a single objective reaches (a task head)
  receives that objective's gradient (``heads="own"``) or :math:`w_i` times it (``"weighted"``).
  Under :mod:`torch.distributed` the rows are averaged across ranks first (one all-reduce).
  With DTensor parameters (FSDP2's ``fully_shard``, tensor parallelism) the rows come from one
  ``backward`` per objective, which the sharding engine reduces into each rank's shard of
  ``.grad``; the Gram matrix is the sum of the shards' contributions, each distinct shard counted
  once (:func:`~torch_moo._sharding.shard_weight`), in one float64 all-reduce, and each rank writes
  :math:`J^\top w` on its own shards.
* :func:`combine_features`, the representation mode (MGDA-UB): :math:`J` holds the gradients with
  respect to the shared representation, and one backward pass of :math:`\sum_i L_i` runs with the
  gradient at the representation replaced by :math:`J^\top w` (a tensor hook); under
  :mod:`torch.distributed` the Gram matrix is averaged across ranks.

The Jacobian is scaled in place by an exact power of two before its Gram matrix is formed
(:func:`~torch_moo.functional.mgda._scale_to_unit_`), so neither overflows nor underflows for
float32 gradients of any finite size; the scale is put back on the Gram matrix in float64 and on
the combination.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge, get_gradient_edge

from torch_moo._sharding import by_shard_weight, is_sharded, local, placed_like, sharded_like
from torch_moo.distributed import mean_across_ranks, means_across_ranks, sum_across_ranks
from torch_moo.functional._scale import power_of_two
from torch_moo.functional.mgda import _scale_to_unit_, _unit_gram

__all__ = ["HEAD_GRADIENTS", "HeadGradient", "Weigh", "combine_features", "combine_parameters", "combine_sharded"]

HeadGradient = Literal["own", "weighted"]
HEAD_GRADIENTS: tuple[HeadGradient, ...] = ("own", "weighted")
Weigh = Callable[[Tensor, torch.dtype], Tensor]
"""``weigh(gram, dtype) -> weights``: the float64 Gram matrix at its true scale to the weights in ``dtype``."""
Rows = list[tuple[Tensor | None, ...]]
Root = Tensor | GradientEdge | None


# ------------------------------------------------------------------------------------ full mode
def combine_parameters(
    losses: Tensor,
    params: Sequence[Tensor],
    seed: Tensor,
    weigh: Weigh,
    *,
    heads: HeadGradient,
    retain_graph: bool,
) -> Tensor:
    """The full mode: write the combination into the parameters' ``.grad``; return the weights
    (:func:`combine_sharded` where some parameters are DTensors)."""
    rows = objective_gradients(losses, params, seed, retain_graph)
    reach = reached(rows)
    shared = [j for j in range(len(params)) if len(reach[j]) > 1]
    own = [j for j in range(len(params)) if len(reach[j]) == 1]
    own_rows = [_own(rows, reach, j) for j in own]
    matrix, *own_grads = means_across_ranks([jacobian(rows, params, shared), *own_rows])
    weights, direction = combined(matrix, weigh)
    accumulate([params[j] for j in shared], direction.split([params[j].numel() for j in shared]))
    accumulate([params[j] for j in own], head_gradients(heads, weights, [reach[j][0] for j in own], own_grads))
    return weights


def objective_gradients(losses: Tensor, inputs: Sequence[Tensor], seed: Tensor, retain_graph: bool) -> Rows:
    """Each objective's gradient (``seed`` times it) over ``inputs``, one ``autograd.grad`` per objective;
    ``None`` where an objective does not reach an input. The graph is kept until the last pass
    (``retain_graph``: after it too)."""
    roots = objective_roots(losses)
    last = len(roots) - 1
    return [gradients(root, inputs, seed, retain_graph or i < last) for i, root in enumerate(roots)]


def reached(rows: Rows) -> list[list[int]]:
    """For each input, the objectives whose gradient reaches it."""
    return [[i for i, row in enumerate(rows) if row[j] is not None] for j in range(len(rows[0]))]


def head_gradients(
    heads: HeadGradient, weights: Tensor, owners: Sequence[int], grads: Sequence[Tensor]
) -> list[Tensor]:
    """What parameters that one objective reaches receive: its gradient, or its weight times it (``"weighted"``)."""
    if heads == "own":
        return list(grads)
    return [sharded_like(weights[i].to(g.dtype) * local(g), g) for i, g in zip(owners, grads)]


def combined(matrix: Tensor, weigh: Weigh, reduce_gram: bool = False) -> tuple[Tensor, Tensor]:
    r"""The weights :math:`w` and :math:`J^\top w` from the Jacobian ``matrix``, which the caller hands over:
    it is scaled in place by a power of two (exact; no copy). ``reduce_gram`` averages the Gram
    matrix across ranks (the representation mode)."""
    exponent = _scale_to_unit_(matrix)
    gram = _unit_gram([matrix], exponent)
    weights = weigh(mean_across_ranks(gram) if reduce_gram else gram, matrix.dtype)
    return weights, (weights @ matrix).mul_(power_of_two(exponent, matrix))  # ldexp_ is many times slower on the CPU


# ---------------------------------------------------------------------- sharded parameters
def combine_sharded(
    losses: Tensor,
    params: Sequence[Tensor],
    seed: Tensor,
    weigh: Weigh,
    *,
    heads: HeadGradient,
    retain_graph: bool,
) -> Tensor:
    r"""The full mode when some parameters are DTensors: :math:`G` from the local shards, reduced once.

    .. math::

        G = G_{\text{plain}} + \sum_{\text{ranks}} \sum_{p\ \text{sharded}} c_p\, J_p^{\text{local}}
        J_p^{\text{local}\top}, \qquad c_p = \frac{\text{distinct shards of } p}{\text{ranks}},

    :math:`G_{\text{plain}}` from the plain parameters' rows averaged across ranks (as under DDP),
    the sharded rows as the sharding engine reduced them (FSDP2 averages them over its data-parallel
    ranks; a tensor-parallel group sees one batch). Every rank gets the same :math:`G`, hence the same
    weights, and writes :math:`J^\top w` on its shards alone: no gradient is gathered.
    """
    rows = backward_gradients(losses, params, seed, retain_graph)
    reach = reached(rows)
    shared = [j for j in range(len(params)) if len(reach[j]) > 1]
    own = [j for j in range(len(params)) if len(reach[j]) == 1]
    shards = [local(p.detach()) for p in params]
    plain = [j for j in shared if not is_sharded(params[j])]
    own_plain = [j for j in own if not is_sharded(params[j])]
    # the plain parameters' rows and own gradients averaged across ranks, as under DDP: one all-reduce
    averaged = means_across_ranks([jacobian(rows, shards, plain), *(_own(rows, reach, j) for j in own_plain)])
    by_weight = {c: [shared[i] for i in group] for c, group in by_shard_weight([params[j] for j in shared]).items()}
    local_rows = [tuple(None if g is None else local(g) for g in row) for row in rows]
    groups = [(plain, averaged[0])] + [(js, jacobian(local_rows, shards, js)) for js in by_weight.values()]
    exponents = [_scale_to_unit_(matrix) for _, matrix in groups]
    plain_gram, *sharded_grams = (_unit_gram([matrix], e) for (_, matrix), e in zip(groups, exponents))
    contributions = (c * g for c, g in zip(by_weight, sharded_grams))
    gram = plain_gram + sum_across_ranks(sum(contributions, torch.zeros_like(plain_gram)))
    weights = weigh(gram, shards[0].dtype)
    for (indices, matrix), exponent in zip(groups, exponents):
        direction = (weights @ matrix).mul_(power_of_two(exponent, matrix))
        pieces = direction.split([shards[j].numel() for j in indices])
        accumulate(
            [params[j] for j in indices],
            [sharded_like(g.view_as(shards[j]), params[j]) for j, g in zip(indices, pieces)],
        )
    own_grads = dict(zip(own_plain, averaged[1:]))
    own_rows = [own_grads[j] if j in own_grads else _own(rows, reach, j) for j in own]
    accumulate([params[j] for j in own], head_gradients(heads, weights, [reach[j][0] for j in own], own_rows))
    return weights


def backward_gradients(losses: Tensor, params: Sequence[Tensor], seed: Tensor, retain_graph: bool) -> Rows:
    """Each objective's gradient over ``params`` by one ``backward`` per objective, read from ``.grad``.

    The sharding engine (FSDP2) reduces a pass's gradients into each rank's shard only through
    ``.grad``: ``autograd.grad`` with respect to sharded parameters finds none. A ValueError when no
    DTensor parameter receives a gradient (FSDP2's gradient synchronisation turned off). The parameters'
    ``.grad`` is kept aside and put back; a parameter outside ``params`` that the losses reach
    receives every objective's gradient, as :meth:`torch.Tensor.backward` of each would give it.
    """
    roots = objective_roots(losses)
    kept = [p.grad for p in params]
    last = len(roots) - 1
    rows: Rows = []
    try:
        for p in params:
            p.grad = None
        for i, root in enumerate(roots):
            if root is not None:
                torch.autograd.backward(root, seed, retain_graph=retain_graph or i < last)
            rows.append(tuple(_taken(p) for p in params))
    finally:
        for p, grad in zip(params, kept):
            p.grad = grad
    if not any(row[j] is not None for row in rows for j, p in enumerate(params) if is_sharded(p)):
        raise ValueError(
            "no objective's gradient reached the DTensor parameters' .grad: the full mode reads each "
            "objective's gradient from the shards FSDP2 reduces, so keep its gradient synchronisation on "
            "(model.set_requires_gradient_sync(True)); to accumulate micro-batches, call backward(losses) "
            "on each and step once"
        )
    return rows


def _own(rows: Rows, reach: list[list[int]], j: int) -> Tensor:
    """The gradient of parameter ``j`` from the one objective that reaches it."""
    gradient = rows[reach[j][0]][j]
    assert gradient is not None  # reached
    return gradient


def _taken(param: Tensor) -> Tensor | None:
    """``param.grad`` (dense, with ``param``'s placements), which is then cleared for the next pass."""
    grad, param.grad = param.grad, None
    return None if grad is None else strided(placed_like(grad, param))


# -------------------------------------------------------------------------- representation mode
def combine_features(
    losses: Tensor,
    features: Tensor | Sequence[Tensor],
    seed: Tensor,
    weigh: Weigh,
    *,
    heads: HeadGradient,
    retain_graph: bool,
) -> Tensor:
    """The representation mode: one backward pass whose gradient at ``features`` is the combination."""
    features = [features] if isinstance(features, Tensor) else list(features)
    if not features or not all(isinstance(f, Tensor) and f.requires_grad for f in features):
        raise ValueError(
            "features must be a tensor (or a sequence of tensors) that requires grad: the shared representation"
        )
    roots = objective_roots(losses)
    # heads="weighted" needs the weights before the heads' backward: the per-objective passes first
    single = len(features) == 1 and heads == "own"
    consumers = feature_consumers(roots, features[0]) if single else None
    if consumers is None:
        rows = [gradients(root, features, seed, True) for root in roots]
        _check_reached([any(g is not None for g in row) for row in rows])
        return _backward_with_features(losses, seed, features, rows, weigh, heads, retain_graph)
    _check_reached([bool(nodes) for nodes in consumers])
    return _backward_capturing_features(losses, seed, features[0], consumers, weigh, retain_graph)


def _features_gradient(
    rows: Sequence[Sequence[Tensor | None]], features: Sequence[Tensor], weigh: Weigh
) -> tuple[Tensor, list[Tensor]]:
    """The weights from the objectives' feature gradients ``rows``, and the combined gradient per feature tensor."""
    weights, direction = combined(jacobian(rows, features, range(len(features))), weigh, reduce_gram=True)
    pieces = direction.split([f.numel() for f in features])
    return weights, [piece.view_as(f) for piece, f in zip(pieces, features)]


def _backward_with_features(losses, seed, features, rows, weigh, heads, retain_graph) -> Tensor:
    """One backward pass of the summed losses whose gradient at the features is replaced (tensor hooks)."""
    weights, pieces = _features_gradient(rows, features, weigh)
    handles = [f.register_hook(lambda _, piece=piece: piece) for f, piece in zip(features, pieces)]
    total = losses.sum() if heads == "own" else weights.to(losses.device, losses.dtype) @ losses
    try:
        total.backward(seed, retain_graph=retain_graph)
    finally:
        for handle in handles:
            handle.remove()
    return weights


def _backward_capturing_features(losses, seed, feature, consumers, weigh, retain_graph) -> Tensor:
    """The same in a single backward pass: hooks on the nodes that consume ``feature`` record each
    objective's share of its gradient, and the hook on ``feature``, which runs once all of them
    have, replaces their sum by the combination."""
    shares: list[list[Tensor]] = [[] for _ in consumers]
    solved: list[Tensor] = []

    def combine(_: Tensor) -> Tensor:
        rows = [(functools.reduce(torch.add, parts),) for parts in shares]
        weights, (piece,) = _features_gradient(rows, [feature], weigh)
        solved.append(weights)
        return piece

    handles = [
        node.register_hook(lambda grad_inputs, _, parts=parts, slot=slot: parts.append(grad_inputs[slot]))
        for parts, nodes in zip(shares, consumers)
        for node, slot in nodes
    ]
    handles.append(feature.register_hook(combine))
    try:
        losses.sum().backward(seed, retain_graph=retain_graph)
    finally:
        for handle in handles:
            handle.remove()
    return solved[0]


# ------------------------------------------------------------------------------------- plumbing
def objective_roots(losses: Tensor) -> list[Root]:
    """Where each objective's backward pass starts.

    When ``losses`` is a ``torch.stack`` of the objectives' losses (as
    :class:`~torch_moo.MultiObjectiveOptimizer` builds it from a sequence), the stack's inputs:
    a pass from one of them reaches only the parameters that objective depends on, so a task
    head gets no gradient (``None``) from the other tasks. Otherwise ``losses[i]``, whose pass
    reaches every parameter ``losses`` depends on (zeros where objective ``i`` does not).
    ``None`` for an entry that needs no gradient.
    """
    node = losses.grad_fn
    if node is not None and node.name() == "StackBackward0" and len(node.next_functions) == losses.numel():
        return [None if fn is None else GradientEdge(fn, nr) for fn, nr in node.next_functions]
    return list(losses)


def _check_reached(reached: Sequence[bool]) -> None:
    for i, hit in enumerate(reached):
        if not hit:
            raise ValueError(
                f"objective {i} does not depend on the features; the representation mode needs every "
                "objective to pass through them (call backward(losses) without features instead)"
            )


def feature_consumers(roots: Sequence[Root], feature: Tensor) -> list[list[tuple[Any, int]]] | None:
    """For each objective, the autograd nodes on its paths that take ``feature`` as an input, with the slot.

    ``None`` when the objectives' shares of the feature gradient cannot be told apart in one
    backward pass: a node that consumes ``feature`` lies on two objectives' paths (a layer
    shared after the representation), or the roots are not the stack's inputs (see
    :func:`objective_roots`). The walk stops at ``feature``, so it covers the heads, not the trunk.
    """
    target = get_gradient_edge(feature)
    owner: dict[Any, int] = {}
    found: list[list[tuple[Any, int]]] = []
    for i, root in enumerate(roots):
        mine: list[tuple[Any, int]] = []
        found.append(mine)
        if not isinstance(root, GradientEdge):
            if root is None:
                continue
            return None
        if root.node is target.node:
            return None
        stack, seen = [root.node], {root.node}
        while stack:
            node = stack.pop()
            for slot, (child, output_nr) in enumerate(node.next_functions):
                if child is target.node and output_nr == target.output_nr:
                    if owner.setdefault(node, i) != i:
                        return None
                    mine.append((node, slot))
                elif child is not None and child not in seen:
                    seen.add(child)
                    stack.append(child)
    return found


def gradients(root: Root, inputs: Sequence[Tensor], seed: Tensor, retain_graph: bool) -> tuple[Tensor | None, ...]:
    """The gradient of one objective (``seed`` times it) with respect to ``inputs``; ``None`` where it
    does not reach; dense where autograd gives a sparse one (``nn.Embedding(sparse=True)``)."""
    if root is None:
        return (None,) * len(inputs)
    grads = torch.autograd.grad(root, inputs, grad_outputs=seed, retain_graph=retain_graph, allow_unused=True)
    return tuple(None if g is None else strided(g) for g in grads)


def strided(tensor: Tensor) -> Tensor:
    """``tensor`` in the dense (strided) layout; a sparse COO one with its duplicate entries summed."""
    return tensor if tensor.layout == torch.strided else tensor.to_dense()


def jacobian(rows: Sequence[Sequence[Tensor | None]], tensors: Sequence[Tensor], indices: Sequence[int]) -> Tensor:
    """The ``k x n`` matrix of the objectives' gradients over ``tensors[indices]``, flattened (zeros where unreached).

    One ``cat`` into one buffer: building rows first and stacking them costs a second copy, and
    on the CPU the fresh allocations page-fault (``benchmarks/README.md``, "MultiGradientDescent").
    """
    reference = tensors[0]
    # the zero is made only when an objective misses a tensor (an op per step less otherwise; unused then)
    zero = reference.new_zeros(()) if any(row[j] is None for row in rows for j in indices) else reference
    pieces = [
        zero.expand(tensors[j].numel()) if (gradient := row[j]) is None else gradient.reshape(-1).to(reference.dtype)
        for row in rows
        for j in indices
    ]
    return torch.cat(pieces).view(len(rows), -1) if pieces else reference.new_zeros(len(rows), 0)


def accumulate(params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
    """Add ``grads`` into ``.grad``, as ``Tensor.backward`` does."""
    for p, g in zip(params, grads):
        g = g.view_as(p)
        if p.grad is None:
            p.grad = g.to(p.dtype)
        else:
            p.grad.add_(g)
