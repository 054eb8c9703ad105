"""The two shapes of weighting rule: from the Gram matrix of the objectives' gradients, or from the loss values."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["GramWeighting", "LossWeighting", "Weighting"]

Rules = dict[str, tuple[bool | Tensor, str]]


class Weighting(nn.Module):
    """A rule that gives the ``k`` objective weights; a small :class:`torch.nn.Module` whose state is in buffers.

    The optimizer that uses a rule moves it to the parameters' device, saves its state in its own
    ``state_dict()`` (:meth:`method_state`: the persistent buffers, plus the Python ``int``
    counters named in :attr:`counters`) and checks a saved state entry by entry before loading
    it (the shape and dtype of each buffer, then :meth:`state_rules`). :meth:`config` lists the
    hyperparameters a saved state must agree with.
    """

    counters: tuple[str, ...] = ()
    """Attributes holding Python ``int`` counters saved with the state (a counter kept on the host
    decides a periodic update without reading a device tensor)."""

    def config(self) -> dict[str, Any]:
        """The hyperparameters a saved state must agree with (plain Python values)."""
        return {}

    def method_state(self) -> dict[str, Any]:
        """Copies of the persistent buffers and the counters, by name."""
        state: dict[str, Any] = {name: buffer.clone() for name, buffer in self.state_dict().items()}
        state.update((name, getattr(self, name)) for name in self.counters)
        return state

    def load_method_state(self, state: dict[str, Any]) -> None:
        """Load a state that :meth:`state_rules` accepts (checked by the optimizer first)."""
        with torch.no_grad():
            for name, buffer in self.state_dict(keep_vars=True).items():
                buffer.copy_(state[name])
        for name in self.counters:
            setattr(self, name, state[name])

    def state_rules(self, state: dict[str, Any]) -> Rules:
        """``{name: (holds, rule)}`` for a saved state of the right types and shapes: by default every tensor
        finite; subclasses add or replace rules."""
        return {
            name: (torch.isfinite(value).all(), "finite") for name, value in state.items() if isinstance(value, Tensor)
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.config().items())


class GramWeighting(Weighting):
    r"""Weights from the Gram matrix :math:`G = J J^\top` of the objectives' gradients (rows of :math:`J`).

    Called as ``weighting(gram)`` (or ``weighting(gram, losses)`` for a rule that also reads the
    loss values), it returns the weights :math:`w`, shape ``(k,)``, in the Gram matrix's dtype on
    its device; the update is :math:`J^\top w`. The optimizers pass the Gram matrix in float64 at
    its true scale (entries from :math:`10^{-60}` to :math:`10^{60}` and beyond), formed without
    overflow from float32 gradients of any finite size.
    """

    def forward(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        raise NotImplementedError


class LossWeighting(Weighting):
    r"""Weights from the loss values and the rule's state, updated after each optimizer step.

    ``weighting(losses)`` is pure: the weights for these (detached, float32) loss values under the
    current state, shape ``(k,)``. After each step the optimizer calls :meth:`observe` with the
    mean loss values of the step's backward passes; a rule with a periodic update records them
    and runs :meth:`update` every ``every`` steps (``None``: only when called).
    """

    counters = ("since_update",)
    period = "every"
    """The name under which :meth:`config` and the errors show ``every`` (a method's own, such as
    ChebyshevALM's ``outer_every``)."""

    def __init__(self, every: int | None = None) -> None:
        super().__init__()
        self.every = every
        setattr(self, self.counters[0], 0)

    def forward(self, losses: Tensor) -> Tensor:
        raise NotImplementedError

    def weigh_step(self, losses: Tensor) -> Tensor:
        """The weights for a training step's backward pass: ``self(losses)``. A rule whose :meth:`record`
        needs what its forward computed for these same values may keep it here (``forward`` stays pure)."""
        return self(losses)

    def observe(self, losses: Tensor, finite: Tensor | None = None) -> None:
        """Record one step's loss values (``finite``: whether they count, as a boolean tensor, read
        without a host synchronisation; ``None``: they do); update every ``every`` steps."""
        self.record(losses, finite)
        (counter,) = self.counters
        setattr(self, counter, getattr(self, counter) + 1)
        if self.every is not None and getattr(self, counter) >= self.every:
            self.update()

    def record(self, losses: Tensor, finite: Tensor | None) -> None:
        """What a step's loss values add to the state between updates; nothing by default."""

    def update(self) -> None:
        """The periodic update from what :meth:`record` kept; resets the step counter."""
        self.apply_update()
        setattr(self, self.counters[0], 0)

    def apply_update(self) -> None:
        """The rule's own periodic update; nothing by default."""

    def config(self) -> dict[str, Any]:
        return {self.period: self.every}

    def state_rules(self, state: dict[str, Any]) -> Rules:
        (counter,) = self.counters
        return {
            **super().state_rules(state),
            counter: (self.every is None or state[counter] < self.every, f"below {self.period}={self.every}"),
        }
