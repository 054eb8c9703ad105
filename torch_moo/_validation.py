"""Argument checks shared by every class: each error names the argument, the value and the rule."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import torch
from torch import Tensor

_Choice = TypeVar("_Choice")


def check_count(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_real(name: str, value: object, *, minimum: float | None = None, strict: bool = False) -> float:
    """A finite real number, optionally bounded below (``strict``: strictly)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value}")
    return value


def check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_root(name: str, value: object) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__} {value!r}")
    return Path(value).expanduser()


def check_choice(name: str, value: object, choices: Sequence[_Choice]) -> _Choice:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return cast(_Choice, value)  # one of the choices


def check_vector(name: str, value: object, length: int) -> Tensor:
    """A finite float32 vector of the given length from a sequence or tensor."""
    try:
        vector = torch.as_tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{name} must be a sequence of {length} numbers, got {value!r}") from error
    if vector.shape != (length,):
        raise ValueError(f"{name} must have {length} entries (one per objective), got shape {tuple(vector.shape)}")
    if not torch.isfinite(vector).all():
        raise ValueError(f"{name} must be finite, got {vector.tolist()}")
    return vector


def check_gram_shape(gram: object) -> Tensor:
    """A floating-point square ``k x k`` tensor with ``k >= 1`` (a Gram matrix)."""
    if not isinstance(gram, Tensor):
        raise TypeError(f"gram must be a tensor, got {type(gram).__name__}")
    if not gram.is_floating_point():
        raise TypeError(f"gram must be floating point, got dtype {gram.dtype}")
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] < 1:
        raise ValueError(f"gram must be a square k x k matrix with k >= 1, got shape {tuple(gram.shape)}")
    return gram


def all_finite(values: Tensor) -> Tensor:
    """Whether every entry is finite, as a boolean scalar tensor: ``x - x`` is 0 exactly for finite ``x``
    (NaN for NaN and infinities). Two small ops, where :func:`torch.isfinite` takes four."""
    return ~(values - values).any()


def check_losses(losses: object, num_objectives: int, *, check_finite: bool) -> Tensor:
    """The loss vector as a 1-D floating tensor of length ``num_objectives``.

    A sequence is stacked; each entry must be a scalar (0-d or one-element) tensor or a number.
    The stack lies on the device of the first tensor entry: tensors elsewhere are moved there
    (differentiably) and numbers are placed there (on the CPU when every entry is a number), in
    the tensor entries' promoted floating dtype (the default dtype when none is floating).
    ``check_finite`` costs one host synchronisation.
    """
    if isinstance(losses, Tensor):
        if losses.dim() != 1:
            raise ValueError(
                f"losses must be a 1-D tensor of {num_objectives} per-objective losses, got shape {tuple(losses.shape)}"
            )
    elif isinstance(losses, Sequence) and not isinstance(losses, (str, bytes)):
        entries = list(losses)
        for index, loss in enumerate(entries):
            if isinstance(loss, Tensor):
                if loss.numel() != 1:
                    raise ValueError(
                        f"losses[{index}] must be a scalar, got shape {tuple(loss.shape)} "
                        "(reduce it, e.g. with .mean())"
                    )
            elif isinstance(loss, bool) or not isinstance(loss, (int, float)):
                raise TypeError(f"losses[{index}] must be a scalar tensor or a number, got {type(loss).__name__}")
        if not entries:
            raise ValueError(f"losses must hold {num_objectives} per-objective losses, got none")
        tensors = [loss for loss in entries if isinstance(loss, Tensor)]
        device = tensors[0].device if tensors else None
        floating = [t.dtype for t in tensors if t.is_floating_point()]
        dtype = functools.reduce(torch.promote_types, floating) if floating else torch.get_default_dtype()
        losses = torch.stack(
            [
                loss.reshape(()).to(device)
                if isinstance(loss, Tensor)
                else torch.tensor(float(loss), dtype=dtype, device=device)
                for loss in entries
            ]
        )
    else:
        raise TypeError(f"losses must be a 1-D tensor or a sequence of scalars, got {type(losses).__name__}")
    if losses.numel() != num_objectives:
        raise ValueError(f"losses must hold num_objectives={num_objectives} values, got {losses.numel()}")
    if not losses.is_floating_point():
        raise TypeError(f"losses must be floating point, got dtype {losses.dtype}")
    if check_finite and not all_finite(losses.detach()):
        raise nonfinite_error(losses)
    return losses


Nonfinite = Literal["raise", "skip", "propagate"]
NONFINITE: tuple[str, ...] = ("raise", "skip", "propagate")
"""The values of ``nonfinite``: what a torch_moo optimizer's ``backward`` does with NaN or infinite losses."""


def nonfinite_error(losses: Tensor, mean: Tensor | None = None, ranks: int = 1) -> ValueError:
    """The error for non-finite losses; ``mean`` is their all-reduced mean over ``ranks`` processes."""
    message = f"losses must be finite, got {losses.detach().cpu().tolist()}"
    if ranks > 1 and mean is not None:
        message += f"; their mean over the {ranks} ranks is {mean.cpu().tolist()} (every rank raises alike)"
    return ValueError(
        message + " (nonfinite='skip' skips such steps; nonfinite='propagate' passes them to .grad, for a GradScaler)"
    )


# ------------------------------------------------------------------------------ saved states
# A load_state_dict checks every entry with these before it changes anything; each error names
# the entry (``where``: its path in the state dict), the rule and the value.


def describe(value: object) -> str:
    """A short description of a saved value for an error message."""
    if isinstance(value, Tensor):
        small = value.numel() <= 8 and value.layout == torch.strided and value.device.type != "meta"
        shown = value.tolist() if small else f"{value.numel()} entries"
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype} ({shown})"
    if isinstance(value, Mapping):
        return f"dict with keys {sorted(map(str, value))}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


def check_saved_keys(where: str, saved: object, expected: set[str]) -> Mapping[str, Any]:
    """A saved dict with exactly the keys ``expected``."""
    if not isinstance(saved, Mapping):
        raise ValueError(f"{where} must be a dict with keys {sorted(expected)}, got {describe(saved)}")
    missing, extra = sorted(expected - set(saved)), sorted(map(str, set(saved) - expected))
    if missing:
        raise ValueError(f"{where} must hold {sorted(expected)}: it lacks {missing}")
    if extra:
        raise ValueError(f"{where} must hold only {sorted(expected)}: it also holds {extra}")
    return saved


def check_saved_config(where: str, saved: object, current: Mapping[str, Any], owner: str) -> None:
    """Raise unless the saved configuration equals ``current`` key by key (``"method"`` first)."""
    if not isinstance(saved, Mapping):
        raise ValueError(f"{where} must be a dict of the settings it was saved with, got {describe(saved)}")
    for key in sorted(set(current) | set(saved), key=lambda key: (key != "method", str(key))):
        if key not in saved:
            raise ValueError(f"{where} lacks {key!r} (this {owner} has {key}={current[key]!r})")
        if key not in current:
            raise ValueError(f"{where} holds {key!r}, a setting this {owner} does not have")
        if not _same(saved[key], current[key]):
            raise ValueError(
                f"state_dict was saved with {key}={saved[key]!r}, but this {owner} has {key}={current[key]!r}"
            )


def _same(saved: object, current: object) -> bool:
    """Equality of plain values (numbers, strings, lists, tuples and dicts of them); a value whose
    ``==`` is no bool (a tensor, an array) is unequal."""
    try:
        return type(saved) is type(current) and bool(saved == current)
    except (RuntimeError, ValueError):  # the truth value of a tensor or array of several entries
        return False


def check_saved_count(where: str, value: object, below: int | None = None) -> int:
    """A saved counter: a non-negative int, less than ``below`` when given."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (below is not None and value >= below):
        rule = "a non-negative int" + ("" if below is None else f" below {below}")
        raise ValueError(f"{where} must be {rule}, got {describe(value)}")
    return value


def check_saved_tensor(where: str, value: object, like: Tensor) -> Tensor:
    """A saved real (floating-point or integer) tensor of ``like``'s shape, copied to ``like``'s dtype and device."""
    if not isinstance(value, Tensor) or value.shape != like.shape:
        raise ValueError(f"{where} must be a tensor of shape {tuple(like.shape)}, got {describe(value)}")
    if value.dtype == torch.bool or value.is_complex() or value.layout != torch.strided:
        raise ValueError(f"{where} must be a dense real tensor, got {value.layout} {value.dtype}")
    return value.to(like.device, like.dtype, copy=True)


def whole_numbers(values: Tensor) -> Tensor:
    """Whether every entry is a finite non-negative whole number (a saved count), as a boolean scalar tensor."""
    return (torch.isfinite(values) & (values >= 0) & (values == values.round())).all()
