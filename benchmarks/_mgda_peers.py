"""The MGDA-family peers as step functions for benchmarks/mgda_step.py: torchjd and LibMTL.

Each entry of :func:`peer_steps` works on its own copy of the model with its own Adam (lr 1e-3);
one call is zero_grad + forward + k cross-entropy losses + the peer's aggregation + step:

* ``torchjd MGDA`` / ``torchjd UPGrad`` (torchjd 0.18): ``mtl_backward(losses, features=z)``
  (one vmapped backward of the k losses to the trunk's Jacobian, heads their own gradient),
  then ``jac_to_grad(trunk, MGDA())`` / ``UPGrad()``;
* ``torchjd MGDA (backward)``: ``autojac.backward(losses)`` over every parameter, then
  ``jac_to_grad(all parameters, MGDA())``;
* ``LibMTL MGDA`` (LibMTL 1.1.5, ``rep_grad=False``, ``mgda_gn="none"`` as torch_moo's default):
  ``losses[i].backward()`` per task, the Frank-Wolfe min-norm solve on the trunk's gradients,
  written back into the trunk's ``.grad``; the heads keep their own gradient.

LibMTL's package ``__init__`` imports torchvision (for a ResNet loader unused here); when
torchvision is missing a stand-in module with ``load_state_dict_from_url`` is registered first.
A peer that does not import is left out.
"""

from __future__ import annotations

import copy
import sys
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F


def _torchjd_steps(net, x, y, k: int) -> dict[str, Callable[[], None]]:
    try:
        from torchjd.aggregation import MGDA, UPGrad
        from torchjd.autojac import backward, jac_to_grad, mtl_backward
    except ImportError:
        return {}
    steps = {}
    for name, aggregator in (("torchjd MGDA", MGDA()), ("torchjd UPGrad", UPGrad())):
        model = copy.deepcopy(net)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(model=model, opt=opt, aggregator=aggregator) -> None:
            opt.zero_grad()
            z = model.trunk(x)
            losses = [F.cross_entropy(head(z), y[:, i]) for i, head in enumerate(model.heads)]
            mtl_backward(losses, features=z)
            jac_to_grad(model.trunk.parameters(), aggregator)
            opt.step()

        steps[name] = step
    model = copy.deepcopy(net)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    aggregator = MGDA()

    def full_step() -> None:
        opt.zero_grad()
        losses = torch.stack([F.cross_entropy(out, y[:, i]) for i, out in enumerate(model(x))])
        backward(losses)
        jac_to_grad(model.parameters(), aggregator)
        opt.step()

    steps["torchjd MGDA (backward)"] = full_step
    return steps


def _libmtl_steps(net, x, y, k: int) -> dict[str, Callable[[], None]]:
    if "torchvision" not in sys.modules:
        try:
            import torchvision  # noqa: F401 - the real one, when it imports
        except ImportError:
            utils = types.ModuleType("torchvision.models.utils")
            utils.load_state_dict_from_url = None
            models = types.ModuleType("torchvision.models")
            models.utils = utils
            vision = types.ModuleType("torchvision")
            vision.models = models
            sys.modules.update({"torchvision": vision, "torchvision.models": models, "torchvision.models.utils": utils})
    try:
        from LibMTL.weighting import MGDA
    except Exception:  # noqa: BLE001 - any import failure leaves the peer out
        return {}
    model = copy.deepcopy(net)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    weighting = MGDA()
    weighting.task_num, weighting.device, weighting.rep_grad = k, x.device, False
    weighting.get_share_params = model.trunk.parameters
    weighting.zero_grad_share_params = lambda: model.trunk.zero_grad(set_to_none=False)

    def step() -> None:
        opt.zero_grad()
        losses = [F.cross_entropy(out, y[:, i]) for i, out in enumerate(model(x))]
        weighting.backward(losses, mgda_gn="none")
        opt.step()

    return {"LibMTL MGDA": step}


def peer_steps(net, x, y, k: int) -> dict[str, Callable[[], None]]:
    """The installed peers' step functions for ``net`` (benchmarks/_models.py's MultiHead) on ``x``, ``y``."""
    return {**_torchjd_steps(net, x, y, k), **_libmtl_steps(net, x, y, k)}
