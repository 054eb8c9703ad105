"""The base optimizer a torch_moo optimizer owns: built from a class or taken as an instance, checked first."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor
from torch.optim import Optimizer

__all__ = ["build_base"]


def build_base(
    method: type[Optimizer],
    params: Any,
    base: type[Optimizer] | Optimizer | None,
    base_kwargs: Mapping[str, Any],
    *,
    default: type[Optimizer],
) -> Optimizer:
    """The base optimizer of ``method``: ``base`` built on ``params``, or an optimizer passed as either.

    Every argument is checked before anything is built: a keyword that neither ``method`` nor
    the base class takes is a :class:`TypeError` naming the closest one of either (so a
    misspelt method option is not blamed on ``Adam.__init__``).
    """
    name = method.__name__
    if isinstance(params, Optimizer):
        if base is not None:
            raise TypeError(f"{name} got an optimizer as its first argument and base={base!r}: pass one of them")
        base, params = params, None
    built = base if isinstance(base, Optimizer) else None
    base_class = type(built) if built is not None else default if base is None else base
    if not (isinstance(base_class, type) and issubclass(base_class, Optimizer)):
        raise TypeError(f"base must be a torch.optim.Optimizer subclass or instance, got {base!r}")
    if callable(getattr(base_class, "backward", None)):
        raise TypeError(f"base must be a single-objective optimizer, got {base_class.__name__}")
    if _needs_closure(base_class):
        raise TypeError(
            f"base={base_class.__name__} needs a closure at every step, which {name} cannot give it: "
            f"{name}.backward writes the combined gradient once (use a first-order optimizer such as Adam or SGD)"
        )
    _check_keywords(method, None if built is not None else base_class, base_kwargs)
    if built is None:
        return base_class(params, **base_kwargs)
    if params is not None:
        _check_same_parameters(name, params, built)
    return built


def _needs_closure(base_class: type[Optimizer]) -> bool:
    closure = inspect.signature(base_class.step).parameters.get("closure")
    return closure is not None and closure.default is inspect.Parameter.empty


def _keywords(function: Any, skip: int) -> tuple[set[str], bool]:
    """The keyword names ``function`` takes after its first ``skip`` parameters, and whether it takes ``**kwargs``."""
    parameters = list(inspect.signature(function).parameters.values())[skip:]
    named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, any(p.kind is p.VAR_KEYWORD for p in parameters)


def _check_keywords(
    method: type[Optimizer], base_class: type[Optimizer] | None, base_kwargs: Mapping[str, Any]
) -> None:
    own, _ = _keywords(method.__init__, skip=2)  # self, params
    accepted, open_ended = _keywords(base_class.__init__, skip=2) if base_class is not None else (set(), False)
    unknown = [key for key in base_kwargs if key not in accepted]
    if open_ended or not unknown:
        return
    key = unknown[0]
    close = difflib.get_close_matches(key, sorted(own | accepted), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    if base_class is None:
        where = "the base optimizer is already built (set its options when building it)"
    else:
        where = f"it is an option of neither {method.__name__} nor {base_class.__name__}"
    raise TypeError(f"{method.__name__} got an unexpected keyword argument {key!r}: {where}{hint}")


def _check_same_parameters(name: str, params: Iterable[Any], base: Optimizer) -> None:
    given: list[Tensor] = []
    for entry in params:
        group = entry["params"] if isinstance(entry, Mapping) else [entry]
        given.extend([group] if isinstance(group, Tensor) else group)
    owned = {id(p) for group in base.param_groups for p in group["params"]}
    if {id(p) for p in given} != owned:
        raise ValueError(
            f"{name} got params that differ from those of base={type(base).__name__} "
            f"({len(given)} given, {len(owned)} in the optimizer): pass the optimizer alone, "
            f"{name}(optimizer, num_objectives=...)"
        )
