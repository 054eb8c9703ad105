"""Checks of an optimizer's ``state_dict`` before anything is loaded: what
:meth:`torch.optim.Optimizer.load_state_dict` would refuse, or the next step would fail on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from torch_moo._validation import describe

__all__ = ["check_base_state"]


def check_base_state(
    name: str, param_groups: list[dict[str, Any]], state: Mapping[Tensor, Any], state_dict: Mapping[str, Any]
) -> None:
    """Raise a :class:`ValueError` naming the entry where ``state_dict`` (its ``"state"`` and
    ``"param_groups"``) does not fit the optimizer called ``name`` with these ``param_groups`` and
    per-parameter ``state``: group sizes, parameter numbering, hyperparameter kinds, state tensor shapes."""
    for key in ("state", "param_groups"):
        if key not in state_dict:
            raise ValueError(f"state_dict lacks {key!r}, which every optimizer's state_dict holds")
    groups = state_dict["param_groups"]
    if not (
        isinstance(groups, (list, tuple))
        and all(isinstance(group, Mapping) and isinstance(group.get("params"), (list, tuple)) for group in groups)
    ):
        raise ValueError(
            f"state_dict['param_groups'] must be a list of dicts with a 'params' list, got {describe(groups)}"
        )
    saved_sizes = [len(group["params"]) for group in groups]
    sizes = [len(group["params"]) for group in param_groups]
    if saved_sizes != sizes:
        raise ValueError(
            f"state_dict was saved for parameter groups of {saved_sizes} parameters, "
            f"but this {name} has groups of {sizes}"
        )
    params: dict[int, Tensor] = {}  # saved index -> parameter (a parameter listed twice keeps one index)
    saved_ids = [index for group in groups for index in group["params"]]
    for index, param in zip(saved_ids, (p for group in param_groups for p in group["params"])):
        if not isinstance(index, int) or isinstance(index, bool) or params.setdefault(index, param) is not param:
            raise ValueError(
                "state_dict['param_groups'] must number each parameter with one int, "
                f"got {[group['params'] for group in groups]}"
            )
    for number, (saved_group, group) in enumerate(zip(groups, param_groups)):
        for key, value in group.items():
            if key in saved_group and not _same_kind(saved_group[key], value):
                raise ValueError(
                    f"state_dict['param_groups'][{number}][{key!r}] must be of the kind of {value!r}, "
                    f"got {describe(saved_group[key])}"
                )
    saved = state_dict["state"]
    if not isinstance(saved, Mapping):
        raise ValueError(f"state_dict['state'] must be a dict of per-parameter states, got {describe(saved)}")
    for index, saved_state in saved.items():
        if index not in params:
            if isinstance(index, int):  # torch keeps other keys as they are (older formats)
                raise ValueError(f"state_dict['state'] holds parameter {index}, which no parameter group lists")
            continue
        if not isinstance(saved_state, Mapping):
            raise ValueError(f"state_dict['state'][{index}] must be a dict, got {describe(saved_state)}")
        current = state.get(params[index], {})
        for key, value in saved_state.items():
            like = current.get(key)
            if isinstance(like, Tensor) and not (
                (isinstance(value, Tensor) and value.shape == like.shape)
                or (like.dim() == 0 and _is_real(value))  # a step saved as a number (older torch)
            ):
                raise ValueError(
                    f"state_dict['state'][{index}][{key!r}] must be a tensor of shape {tuple(like.shape)} "
                    f"(as this {name}'s), got {describe(value)}"
                )


def _same_kind(saved: object, current: object) -> bool:
    """Whether a saved hyperparameter can stand where ``current`` does: a bool for a bool, a real
    number for a number, a sequence of as many numbers for one (Adam's ``betas``); other kinds
    (``None``, strings, tensors) are not checked."""
    if isinstance(current, bool):
        return isinstance(saved, bool)
    if _is_real(current):
        return _is_real(saved)
    if isinstance(current, (list, tuple)) and all(map(_is_real, current)):
        return isinstance(saved, (list, tuple)) and len(saved) == len(current) and all(map(_is_real, saved))
    return True


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
