"""The protocol every torch_moo optimizer follows: ``backward(losses)`` then ``step()``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from torch_moo._validation import all_finite, check_count, check_losses
from torch_moo.distributed import mean_across_ranks

__all__ = ["MultiObjectiveOptimizer", "LossSpaceOptimizer"]

Losses = Tensor | Sequence[Tensor | float]
STATE_KEY = "torch_moo"


class MultiObjectiveOptimizer(Optimizer):
    r"""A :class:`torch.optim.Optimizer` that owns a base optimizer and takes a loss vector.

    The base optimizer (``base``, built with ``**base_kwargs``) does the parameter update; this
    object shares its ``param_groups``, ``state`` and ``defaults``, so learning-rate schedulers,
    gradient clipping, ``add_param_group`` and step hooks work as with the base alone. A
    training step is::

        opt.zero_grad()
        opt.backward(losses)  # per-objective losses -> combined gradient in .grad
        opt.step()            # base update, then the method's own state

    Subclasses implement :meth:`_combine` (how ``.grad`` is filled), :meth:`_advance` (the
    method's state update after the base step) and the hooks that save that state.

    Args:
        params: parameters or parameter groups, as for any optimizer.
        num_objectives: length of the loss vector.
        check_finite: raise on non-finite losses (one host synchronisation per ``backward``).
            With ``False`` such losses reach ``.grad`` as in plain PyTorch (where a
            :class:`torch.amp.GradScaler` skips the step) and never enter the method's state.
        base: the optimizer class that updates the parameters (one that needs a closure for
            every step, such as :class:`torch.optim.LBFGS`, is not supported).
        **base_kwargs: passed to ``base``.
    """

    def __init__(
        self,
        params: Any,
        *,
        num_objectives: int,
        check_finite: bool = True,
        base: type[Optimizer] = torch.optim.Adam,
        **base_kwargs: Any,
    ) -> None:
        self.num_objectives = check_count("num_objectives", num_objectives)
        if not (isinstance(base, type) and issubclass(base, Optimizer)):
            raise TypeError(f"base must be a torch.optim.Optimizer subclass, got {base!r}")
        if issubclass(base, MultiObjectiveOptimizer):
            raise TypeError(f"base must be a single-objective optimizer, got {base.__name__}")
        self.check_finite = bool(check_finite)
        self.base = base(params, **base_kwargs)
        super().__init__(self.base.param_groups, self.base.defaults)
        self._share_base()
        first = self.param_groups[0]["params"][0]
        self._device = first.device
        self._pending_sum: Tensor | None = None
        self._pending_count = 0

    def _share_base(self) -> None:
        self.param_groups = self.base.param_groups
        self.state = self.base.state
        self.defaults = self.base.defaults

    # ----------------------------------------------------------------------------- protocol
    def backward(
        self,
        losses: Losses,
        *,
        features: Tensor | Sequence[Tensor] | None = None,
        scaler: torch.amp.GradScaler | None = None,
        retain_graph: bool = False,
    ) -> Tensor:
        """Fill ``.grad`` (accumulating) with the method's combination of the objectives' gradients.

        Args:
            losses: the per-objective losses, unscaled and not yet backwarded: a 1-D tensor of
                length ``num_objectives`` or a sequence of scalars.
            features: the shared representation, used by gradient-space methods for their
                representation-gradient mode; loss-space methods ignore it.
            scaler: a :class:`torch.amp.GradScaler`; the backward pass is scaled by it.
            retain_graph: keep the graph, as in :meth:`torch.Tensor.backward`.

        Returns:
            The objective weights used (detached, float32, on the losses' device).
        """
        losses = check_losses(losses, self.num_objectives, check_finite=self.check_finite)
        if not losses.requires_grad:
            raise ValueError(
                "losses do not require grad: pass them before .detach() or .item() "
                "(use weights(losses) to compute weights without a backward pass)"
            )
        values = mean_across_ranks(losses.detach().to(self._device, torch.float32))
        weights = self._combine(losses, values, features=features, scaler=scaler, retain_graph=retain_graph)
        self._pending_sum = values if self._pending_sum is None else self._pending_sum + values
        self._pending_count += 1
        return weights.to(losses.device)

    def step(self, closure: Callable[[], Losses] | None = None) -> Losses | None:  # type: ignore[override]
        """The base optimizer's step, then the method's state update.

        Args:
            closure: optional; re-evaluates the model and returns the loss vector (without
                calling backward, which ``step`` does), or ``None`` after calling :meth:`backward`
                itself. Not combinable with GradScaler.

        Returns:
            The closure's losses, or ``None``.
        """
        losses = None
        if closure is not None:
            with torch.enable_grad():
                losses = closure()
            if losses is not None:  # a closure returning None (Lightning's) has done the backward itself
                self.backward(losses)
        self._apply_pending()
        return losses

    def _apply_pending(self) -> None:
        """The base step and the method's state update for the backward calls since the last step.

        Separate from :meth:`step`, which :class:`torch.optim.Optimizer` wraps with its hooks,
        so that a subclass's own ``step`` can take several such steps with hooks run once.
        """
        if self._pending_sum is None:
            raise RuntimeError(
                f"{type(self).__name__}.step() found no backward() since the last step() or zero_grad(): "
                "call opt.backward(losses) with the per-objective losses first, "
                "or pass step() a closure that returns them"
            )
        self.base.step()
        # Loss values are detached and the method's state needs no grad: no graph is recorded.
        self._advance(self._pending_sum if self._pending_count == 1 else self._pending_sum / self._pending_count)
        self._pending_sum, self._pending_count = None, 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients (through the base optimizer) and the losses recorded by :meth:`backward`."""
        self.base.zero_grad(set_to_none)
        self._pending_sum, self._pending_count = None, 0

    # -------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict plus a ``"torch_moo"`` entry with the method's configuration and state."""
        state = super().state_dict()
        state[STATE_KEY] = {"config": self._config(), "state": self._method_state()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict` of an identically configured optimizer.

        Raises:
            ValueError: the state dict lacks the method entry or was saved with another
                configuration; nothing is changed then.
        """
        name = type(self).__name__
        if STATE_KEY not in state_dict:
            raise ValueError(
                f"state_dict has no {STATE_KEY!r} entry: it was not saved by a torch_moo optimizer "
                f"(load a plain optimizer's state into {name}.base instead)"
            )
        saved = state_dict[STATE_KEY]
        current = self._config()
        for key in sorted(set(current) | set(saved["config"]), key=lambda key: (key != "method", key)):
            if saved["config"].get(key) != current.get(key):
                raise ValueError(
                    f"state_dict was saved with {key}={saved['config'].get(key)!r}, "
                    f"but this {name} has {key}={current.get(key)!r}"
                )
        method_state = self._check_method_state(saved["state"])
        super().load_state_dict({key: value for key, value in state_dict.items() if key != STATE_KEY})
        self.base.__setstate__({"state": self.state, "param_groups": self.param_groups})
        self._share_base()
        self._load_method_state(method_state)
        self._pending_sum, self._pending_count = None, 0

    def _check_method_state(self, saved: dict[str, Any]) -> dict[str, Any]:
        """The saved method state as float32 tensors on this optimizer's device, shapes checked."""
        current = self._method_state()
        if set(saved) != set(current):
            raise ValueError(
                f"state_dict holds method state {sorted(saved)}, expected {sorted(current)} for {type(self).__name__}"
            )
        checked = {}
        for key, value in saved.items():
            if isinstance(current[key], Tensor):
                if not isinstance(value, Tensor) or value.shape != current[key].shape:
                    shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                    raise ValueError(
                        f"state_dict entry {key!r} has shape {shape}, expected {tuple(current[key].shape)}"
                    )
                value = value.to(self._device, torch.float32)
            checked[key] = value
        return checked

    def __getstate__(self) -> dict[str, Any]:
        # Optimizer keeps only defaults, state and param_groups; the base and the method's state
        # must travel too (copy.deepcopy, pickling the whole optimizer).
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_objectives={self.num_objectives}, base={self.base!r})"

    # ---------------------------------------------------------------------- for subclasses
    def _combine(
        self,
        losses: Tensor,
        values: Tensor,
        *,
        features: Tensor | Sequence[Tensor] | None,
        scaler: torch.amp.GradScaler | None,
        retain_graph: bool,
    ) -> Tensor:
        """Fill ``.grad`` from ``losses``; ``values`` are their detached float32 values (all-reduced under DDP)."""
        raise NotImplementedError

    def _advance(self, values: Tensor) -> None:
        """Update the method's state after the base step, from the mean loss values of the backward calls."""
        raise NotImplementedError

    def _finite(self, values: Tensor) -> Tensor | None:
        """``None`` when :meth:`backward` has already rejected non-finite losses, else whether ``values`` are finite."""
        return None if self.check_finite else all_finite(values)

    def _config(self) -> dict[str, Any]:
        """Hyperparameters a saved state must agree with."""
        return {"method": type(self).__name__, "num_objectives": self.num_objectives, "base": type(self.base).__name__}

    def _method_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load_method_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class LossSpaceOptimizer(MultiObjectiveOptimizer):
    r"""Methods whose weights come from the loss values and the method's state: one backward of
    :math:`\sum_i w_i f_i` per step. Subclasses implement :meth:`_weights`."""

    def weights(self, losses: Losses) -> Tensor:
        """The objective weights for these losses under the current state; pure (changes nothing)."""
        losses = check_losses(losses, self.num_objectives, check_finite=self.check_finite)
        with torch.no_grad():
            return self._weights(losses.detach().to(self._device, torch.float32)).to(losses.device)

    def _weights(self, values: Tensor) -> Tensor:
        raise NotImplementedError

    def _combine(self, losses, values, *, features, scaler, retain_graph):  # noqa: D102 (documented on the base)
        weights = self._weights(values)
        gradient = weights if scaler is None else scaler.scale(weights)
        losses.backward(gradient.to(losses.device, losses.dtype), retain_graph=retain_graph)
        return weights
