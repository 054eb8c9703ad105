r"""The MGDA and UPGrad peers (torchjd 0.18, LibMTL 1.1.5) as training-step functions for benchmarks/mgda_step.py.

Each entry of :func:`peer_steps` owns a ``copy.deepcopy`` of the model (benchmarks/_models.py's
``MultiHead``) and an Adam (lr 1e-3); one call is zero_grad + forward + k cross-entropy losses +
the peer's backward and aggregation + ``opt.step()``. Per weighting of ``PEERS`` (``mgda``,
``upgrad``; ``W`` is MGDA or UPGrad):

* ``torchjd W (autogram)``: ``torchjd.autogram.Engine(trunk, batch_dim=None)`` (the losses are
  batch means: they have no batch dimension), ``gramian = engine.compute_gramian(losses)`` (one
  vmapped backward of the k losses, the trunk's Gram matrix accumulated module by module, never
  the whole Jacobian at once), ``weights = MGDAWeighting()(gramian)`` / ``UPGradWeighting()(gramian)``, then
  ``losses.backward(weights)``: the trunk gets :math:`J^\top w`, head ``i`` gets :math:`w_i`
  times its gradient (torch_moo's ``heads="weighted"``; its default ``"own"`` gives head ``i``
  its gradient);
* ``torchjd W (mtl_backward)``: ``torchjd.autojac.mtl_backward(losses, features=z)`` with ``z``
  the trunk's output (k ``autograd.grad`` calls through the heads, each head its own gradient,
  then one vmapped backward of the k rows of dL/dz through the trunk into ``.jac``), then
  ``jac_to_grad(trunk parameters, MGDA())`` / ``UPGrad()`` (UPGrad's default projector needs
  ``torchjd[quadprog-projector]``);
* ``LibMTL MGDA`` (LibMTL has no UPGrad): ``LibMTL.weighting.MGDA.backward(losses,
  mgda_gn="none")``, LibMTL's default (``rep_grad=False``, ``--mgda_gn none``: no gradient
  normalization): k ``loss_i.backward()`` (the heads accumulate their own gradient), LibMTL's
  Frank-Wolfe min-norm solve on the k flattened trunk gradients, their weighted sum written into
  the trunk's ``.grad``;
* ``LibMTL MGDA (rep_grad)``: the same with ``rep_grad=True``, as LibMTL's ``AbsArchitecture``
  sets it up for a single-tensor encoder: each head runs on its own detached copy of ``z``, k
  ``loss_i.backward()`` through the heads only, the solve on the k batch-summed dL/dz (k x width),
  then k ``z.backward(w_i * dL_i/dz)`` through the trunk.

The LibMTL weighting is used outside its Trainer with the attributes the Trainer's ``MTLmodel``
(architecture + weighting) would give it: ``task_num``, ``task_name``, ``device``, ``rep_grad``,
``get_share_params`` and ``zero_grad_share_params`` (plus ``rep``/``rep_tasks`` each step when
``rep_grad``). Workarounds for LibMTL 1.1.5 (written for torch 1.8):

* its package ``__init__`` imports ``LibMTL.model.resnet``, which imports
  ``torchvision.models.utils`` (absent from torchvision >= 0.13 at least; installing torchvision would
  replace this torch); while LibMTL imports, a stand-in for it holds
  ``torch.hub.load_state_dict_from_url``, and ``sys.modules`` is restored afterwards;
* ``zero_grad_share_params`` zeroes the trunk's gradients in place (``set_to_none=False``, torch
  1.x's default): with torch 2's ``None`` gradients LibMTL's ``_reset_grad`` fails on
  ``param.grad.data``.

:func:`peer_weights` gives each peer solver's min-norm weights for a k x n gradient matrix. A peer
whose package does not import is left out with a warning.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import sys
import types
import warnings
from collections.abc import Callable, Container, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from _models import MultiHead

__all__ = ["PEERS", "WEIGHT_PEERS", "peer_steps", "peer_weights"]

Step = Callable[[], None]
Make = Callable[["MultiHead", Tensor, Tensor], Step]
WEIGHT_PEERS = ("torchjd MGDA", "LibMTL MGDA")


def _copy(net: MultiHead) -> tuple[MultiHead, torch.optim.Adam]:
    model = copy.deepcopy(net)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def _losses(outputs: list[Tensor], y: Tensor) -> list[Tensor]:
    return [F.cross_entropy(out, y[:, i]) for i, out in enumerate(outputs)]


def _torchjd_autogram(weighting_name: str) -> Make:
    def make(net: MultiHead, x: Tensor, y: Tensor) -> Step:
        from torchjd import aggregation
        from torchjd.autogram import Engine

        weighting = getattr(aggregation, weighting_name)()
        model, opt = _copy(net)
        engine = Engine(model.trunk, batch_dim=None)

        def step() -> None:
            opt.zero_grad()
            losses = torch.stack(_losses(model(x), y))
            losses.backward(weighting(engine.compute_gramian(losses)))
            opt.step()

        return step

    return make


def _torchjd_mtl(aggregator_name: str) -> Make:
    def make(net: MultiHead, x: Tensor, y: Tensor) -> Step:
        from torchjd import aggregation
        from torchjd.autojac import jac_to_grad, mtl_backward

        aggregator = getattr(aggregation, aggregator_name)()
        model, opt = _copy(net)

        def step() -> None:
            opt.zero_grad()
            z = model.trunk(x)
            mtl_backward(_losses([head(z) for head in model.heads], y), features=z)
            jac_to_grad(model.trunk.parameters(), aggregator)
            opt.step()

        return step

    return make


_TORCHVISION = ("torchvision", "torchvision.models", "torchvision.models.utils")


@contextlib.contextmanager
def _torchvision_stand_in() -> Iterator[None]:
    saved = {name: sys.modules.get(name) for name in _TORCHVISION}
    vision, models, utils = (types.ModuleType(name) for name in _TORCHVISION)
    vision.models, models.utils = models, utils
    utils.load_state_dict_from_url = torch.hub.load_state_dict_from_url
    sys.modules.update(zip(_TORCHVISION, (vision, models, utils)))
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _libmtl_mgda() -> type:
    with _torchvision_stand_in():
        from LibMTL.weighting import MGDA
    return MGDA


def _libmtl(rep_grad: bool) -> Make:
    def make(net: MultiHead, x: Tensor, y: Tensor) -> Step:
        model, opt = _copy(net)
        tasks = [str(i) for i in range(len(model.heads))]
        weighting = _libmtl_mgda()()
        weighting.task_num, weighting.task_name, weighting.device = len(tasks), tasks, x.device
        weighting.rep_grad = rep_grad
        weighting.get_share_params = model.trunk.parameters
        weighting.zero_grad_share_params = functools.partial(model.trunk.zero_grad, set_to_none=False)
        weighting.init_param()

        def step() -> None:
            opt.zero_grad()
            if rep_grad:  # AbsArchitecture._prepare_rep for an encoder returning one tensor
                z = model.trunk(x)
                weighting.rep = dict.fromkeys(tasks, z)
                weighting.rep_tasks = {task: z.detach().clone().requires_grad_() for task in tasks}
                outputs = [head(weighting.rep_tasks[task]) for head, task in zip(model.heads, tasks)]
            else:
                outputs = model(x)
            weighting.backward(_losses(outputs, y), mgda_gn="none")
            opt.step()

        return step

    return make


PEERS: dict[str, dict[str, Make]] = {
    "mgda": {
        "torchjd MGDA (autogram)": _torchjd_autogram("MGDAWeighting"),
        "torchjd MGDA (mtl_backward)": _torchjd_mtl("MGDA"),
        "LibMTL MGDA": _libmtl(rep_grad=False),
        "LibMTL MGDA (rep_grad)": _libmtl(rep_grad=True),
    },
    "upgrad": {
        "torchjd UPGrad (autogram)": _torchjd_autogram("UPGradWeighting"),
        "torchjd UPGrad (mtl_backward)": _torchjd_mtl("UPGrad"),
    },
}
"""Per weighting (``mgda``, ``upgrad``), each peer's name and its step maker."""


def peer_steps(
    net: MultiHead, x: Tensor, y: Tensor, k: int, weightings: Sequence[str], names: Container[str] | None = None
) -> dict[str, Step]:
    """One step function per importable peer of ``weightings`` (keys of ``PEERS``; only those in
    ``names`` if given), each on its own copy of ``net`` (``k`` heads) and Adam."""
    if len(net.heads) != k or y.shape[1] != k:
        raise ValueError(f"k={k} but the model has {len(net.heads)} heads and y {y.shape[1]} columns")
    steps = {}
    for weighting in weightings:
        for name, make in PEERS[weighting].items():
            if names is not None and name not in names:
                continue
            try:
                steps[name] = make(net, x, y)
            except ImportError as error:
                warnings.warn(f"{name} left out: {error}", stacklevel=2)
    return steps


def peer_weights(name: str, grads: Tensor) -> Tensor:
    """The min-norm weights (one per row of the k x n ``grads``) from the solver of ``name`` in ``WEIGHT_PEERS``.

    ``torchjd MGDA``: ``MGDA().weighting`` (Frank-Wolfe on the Gram matrix from the uniform weights,
    at most 100 iterations, stops when the step size drops below 1e-3); ``LibMTL MGDA``:
    ``MGDA._find_min_norm_element`` (best pair, then Frank-Wolfe, at most 250 iterations, stops when
    the weights move less than 1e-5 in l1) on ``grads`` cast to float32, its only dtype (as in its
    ``backward``), weights returned in ``grads``' dtype; it returns None at its cap (raised here as
    RuntimeError), puts 0.999/0.001 (never 1/0) where a two-point line search ends at an endpoint,
    and fails (UnboundLocalError) when every pair's min squared norm exceeds 1e8.
    """
    if name == "torchjd MGDA":
        from torchjd.aggregation import MGDA

        return MGDA().weighting(grads)
    if name == "LibMTL MGDA":
        weights = _libmtl_mgda()()._find_min_norm_element(grads.float())
        if weights is None:
            raise RuntimeError("LibMTL's min-norm solver reached its 250 iterations without converging")
        return weights.to(grads.dtype)
    raise ValueError(f"unknown peer {name!r} (choose from {WEIGHT_PEERS})")
