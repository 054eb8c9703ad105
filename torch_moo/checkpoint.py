"""Checkpoints through :mod:`torch.distributed.checkpoint` (DCP): sharded, and resumable at another world size.

DCP's :func:`~torch.distributed.checkpoint.state_dict.get_state_dict` keys an optimizer's state by
parameter name and keeps each DTensor sharded, so a checkpoint saved by 2 ranks loads on 1 or 4;
but it keeps only ``"state"`` and ``"param_groups"`` (a torch_moo optimizer's ``"torch_moo"`` entry
would be lost) and, for an optimizer without state, takes a step to create it (a torch_moo
optimizer's :meth:`~torch_moo.MultiObjectiveOptimizer.step` wants a :meth:`backward` first), which
creates the base optimizer's state alone (a state dict to load into needs every entry: the
per-objective moments of ``moments=`` are made here as zeros, equivalent to none).
:func:`get_state_dict` and :func:`set_state_dict` here hand DCP the base optimizer, carry the
method's entry (its small tensors are the same on every rank, saved once) and the
:class:`~torch_moo.SparsityController`'s state (masks as DTensors placed like their parameters; the
generator state rank 0's, whose draws every rank applies: DCP keeps one rank's copy of a plain tensor);
:class:`TrainingState` is the same as one :class:`~torch.distributed.checkpoint.stateful.Stateful`
entry for :func:`torch.distributed.checkpoint.save` and :func:`~torch.distributed.checkpoint.load`.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.distributed.checkpoint import state_dict as dcp_state
from torch.distributed.checkpoint.stateful import Stateful
from torch.optim import Optimizer

from torch_moo.base import STATE_KEY, MultiObjectiveOptimizer
from torch_moo.distributed import broadcast_from_first
from torch_moo.sparsity import SparsityController

__all__ = ["TrainingState", "get_state_dict", "set_state_dict"]


def get_state_dict(
    model: nn.Module,
    optimizer: Optimizer,
    controller: SparsityController | None = None,
    *,
    options: dcp_state.StateDictOptions | None = None,
) -> dict[str, Any]:
    """The model's, the optimizer's and the controller's state, as DCP saves it.

    Args:
        model: the model (plain, DDP, FSDP2, tensor parallel).
        optimizer: a torch_moo optimizer, or any :class:`torch.optim.Optimizer`.
        controller: the :class:`~torch_moo.SparsityController` on ``optimizer``, if any.
        options: passed to DCP's ``get_state_dict`` (full state dicts, CPU offload, ...).

    Returns:
        ``{"model", "optimizer"}``, and ``"torch_moo"`` / ``"sparsity"`` where they exist.
    """
    model_state, optimizer_state = dcp_state.get_state_dict(model, _base(optimizer), options=options)
    if isinstance(optimizer, MultiObjectiveOptimizer) and optimizer._init_state():  # after DCP's own init
        model_state, optimizer_state = dcp_state.get_state_dict(model, _base(optimizer), options=options)
    state: dict[str, Any] = {"model": model_state, "optimizer": optimizer_state}
    if isinstance(optimizer, MultiObjectiveOptimizer):
        state[STATE_KEY] = optimizer._entry()
    if controller is not None:
        state["sparsity"] = sparsity = controller.state_dict()
        if sparsity["generator"] is not None:  # rank 0's draws are the ones taken: its generator is saved
            sparsity["generator"] = broadcast_from_first([sparsity["generator"]])[0]
    return state


def set_state_dict(
    model: nn.Module,
    optimizer: Optimizer,
    state: dict[str, Any],
    controller: SparsityController | None = None,
    *,
    options: dcp_state.StateDictOptions | None = None,
) -> None:
    """Load :func:`get_state_dict`'s ``state`` (as DCP loaded it, at any world size) into the objects.

    The method's entry and the controller's state are checked before they are loaded, as their
    ``load_state_dict`` checks them; the controller's last, so that its masks apply to the loaded
    weights.

    Raises:
        ValueError: ``state`` lacks an entry the objects need, or one of them refuses its entry.
    """
    moo = optimizer if isinstance(optimizer, MultiObjectiveOptimizer) else None
    expected = ["model", "optimizer"]
    expected += [STATE_KEY] if moo is not None else []
    expected += ["sparsity"] if controller is not None else []
    missing = [key for key in expected if key not in state]
    if missing:
        raise ValueError(f"state lacks {missing}: it was not saved by get_state_dict with these objects")
    method_state = None if moo is None else moo._check_entry(state[STATE_KEY])  # before anything loads
    dcp_state.set_state_dict(
        model,
        _base(optimizer),
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=options,
    )
    if moo is not None and method_state is not None:
        moo._share_base()  # the base's load made new state and groups: share them again (schedulers)
        moo._install(method_state)
    if controller is not None:
        controller.load_state_dict(state["sparsity"])


class TrainingState(Stateful):
    """A model, its optimizer and its controller as one :class:`~torch.distributed.checkpoint.stateful.Stateful`.

    Example:
        >>> import tempfile
        >>> import torch.distributed.checkpoint as dcp
        >>> from torch_moo import ChebyshevALM
        >>> model = torch.nn.Linear(3, 2)
        >>> opt = ChebyshevALM(model.parameters(), num_objectives=2, preference=[0.5, 0.5], lr=1e-2)
        >>> _ = opt.backward(model(torch.randn(8, 3)).square().mean(0))
        >>> opt.step()
        >>> path = tempfile.mkdtemp()
        >>> _ = dcp.save({"train": TrainingState(model, opt)}, checkpoint_id=path)
        >>> model2 = torch.nn.Linear(3, 2)
        >>> opt2 = ChebyshevALM(model2.parameters(), num_objectives=2, preference=[0.5, 0.5], lr=1e-2)
        >>> dcp.load({"train": TrainingState(model2, opt2)}, checkpoint_id=path)
        >>> torch.equal(model2.weight, model.weight), torch.equal(opt2.multipliers, opt.multipliers)
        (True, True)
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        controller: SparsityController | None = None,
        *,
        options: dcp_state.StateDictOptions | None = None,
    ) -> None:
        self.model, self.optimizer, self.controller, self.options = model, optimizer, controller, options

    def state_dict(self) -> dict[str, Any]:
        return get_state_dict(self.model, self.optimizer, self.controller, options=self.options)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_state_dict(self.model, self.optimizer, state_dict, self.controller, options=self.options)


def _base(optimizer: Optimizer) -> Optimizer:
    """What DCP handles: a torch_moo optimizer's base (which shares its state and groups), else ``optimizer``."""
    return optimizer.base if isinstance(optimizer, MultiObjectiveOptimizer) else optimizer
