"""Argument checks shared by every class: each error names the argument, the value and the rule."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor


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


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value  # type: ignore[return-value]


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


def all_finite(values: Tensor) -> Tensor:
    """Whether every entry is finite, as a boolean scalar tensor: ``x - x`` is 0 exactly for finite ``x``
    (NaN for NaN and infinities). Two small ops, where :func:`torch.isfinite` takes four."""
    return ~(values - values).any()


def check_losses(losses: object, num_objectives: int, *, check_finite: bool) -> Tensor:
    """The loss vector as a 1-D floating tensor of length ``num_objectives``.

    A sequence is stacked; each entry must be a scalar (0-d or one-element) tensor or a number.
    ``check_finite`` costs one host synchronisation.
    """
    if isinstance(losses, Tensor):
        if losses.dim() != 1:
            raise ValueError(
                f"losses must be a 1-D tensor of {num_objectives} per-objective losses, got shape {tuple(losses.shape)}"
            )
    elif isinstance(losses, Sequence) and not isinstance(losses, (str, bytes)):
        entries = []
        for index, loss in enumerate(losses):
            if isinstance(loss, Tensor):
                if loss.numel() != 1:
                    raise ValueError(
                        f"losses[{index}] must be a scalar, got shape {tuple(loss.shape)} (reduce it, e.g. with .mean())"
                    )
                entries.append(loss.reshape(()))
            elif isinstance(loss, (int, float)) and not isinstance(loss, bool):
                entries.append(torch.tensor(float(loss)))
            else:
                raise TypeError(f"losses[{index}] must be a scalar tensor or a number, got {type(loss).__name__}")
        if not entries:
            raise ValueError(f"losses must hold {num_objectives} per-objective losses, got none")
        losses = torch.stack(entries)
    else:
        raise TypeError(f"losses must be a 1-D tensor or a sequence of scalars, got {type(losses).__name__}")
    if losses.numel() != num_objectives:
        raise ValueError(f"losses must hold num_objectives={num_objectives} values, got {losses.numel()}")
    if not losses.is_floating_point():
        raise TypeError(f"losses must be floating point, got dtype {losses.dtype}")
    if check_finite and not all_finite(losses.detach()):
        raise nonfinite_error(losses)
    return losses


NONFINITE = ("raise", "skip", "propagate")
"""The values of ``nonfinite``: what a torch_moo optimizer's ``backward`` does with NaN or infinite losses."""


def check_nonfinite(check_finite: object, nonfinite: object) -> str:
    """The ``nonfinite`` mode from it and the older ``check_finite`` flag (``True``: ``"raise"``,
    ``False``: ``"propagate"``); ``nonfinite`` wins when given, but may not contradict ``check_finite=False``."""
    if nonfinite is None:
        return "raise" if check_finite else "propagate"
    check_choice("nonfinite", nonfinite, NONFINITE)
    if not check_finite and nonfinite != "propagate":
        raise ValueError(
            f"check_finite=False (nonfinite='propagate') contradicts nonfinite={nonfinite!r}: pass nonfinite alone"
        )
    return nonfinite  # type: ignore[return-value]


def nonfinite_error(losses: Tensor, mean: Tensor | None = None, ranks: int = 1) -> ValueError:
    """The error for non-finite losses; ``mean`` is their all-reduced mean over ``ranks`` processes."""
    message = f"losses must be finite, got {losses.detach().cpu().tolist()}"
    if ranks > 1 and mean is not None:
        message += f"; their mean over the {ranks} ranks is {mean.cpu().tolist()} (every rank raises alike)"
    return ValueError(
        message + " (nonfinite='skip' skips such steps; nonfinite='propagate' passes them to .grad, for a GradScaler)"
    )
