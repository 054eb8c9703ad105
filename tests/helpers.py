"""Small models and loops shared by the tests."""

from __future__ import annotations

import copy
import io
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from torch_moo import (
    ChebyshevALM,
    FixedWeighting,
    MinMaxWeighting,
    MultiGradientDescent,
    ParetoTangentExplorer,
    SparsityController,
)


class TwoHeads(nn.Module):
    """A trunk with two regression heads, so that objectives share parameters and own some."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(16, 1) for _ in range(2))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        z = self.trunk(x)
        return [head(z).squeeze(-1) for head in self.heads]


def batch(step: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(size, 6, generator=generator)
    return x, x[:, 0] - x[:, 1], torch.sin(x[:, 2])


def task_losses(model: TwoHeads, step: int) -> torch.Tensor:
    x, y1, y2 = batch(step)
    out1, out2 = model(x)
    return torch.stack([(out1 - y1).square().mean(), (out2 - y2).square().mean()])


def features_and_losses(model: TwoHeads, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The trunk's output (the shared representation) and :func:`task_losses` computed from it."""
    x, y1, y2 = batch(step)
    z = model.trunk(x)
    out1, out2 = (head(z).squeeze(-1) for head in model.heads)
    return z, torch.stack([(out1 - y1).square().mean(), (out2 - y2).square().mean()])


def flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# The running sums between outer updates are float64 (torch_moo/weightings/_steps.py); the rest is float32.
FLOAT64_STATE = {"estimate_sum", "estimate_count", "loss_sum", "loss_count"}


def state_dtype(key: str) -> torch.dtype:
    """The dtype of the method-state entry ``key``."""
    return torch.float64 if key in FLOAT64_STATE else torch.float32


def train(
    model: TwoHeads,
    opt: torch.optim.Optimizer,
    steps: int,
    start: int = 0,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> None:
    """``steps`` protocol steps (``zero_grad``, ``backward`` of :func:`task_losses`, ``step``) from batch ``start``.

    A plain torch.optim optimizer (no ``backward``) steps on the sum of the losses. A ``scheduler``
    steps after every optimizer step.
    """
    for step in range(start, start + steps):
        opt.zero_grad()
        losses = task_losses(model, step)
        if hasattr(opt, "backward"):
            opt.backward(losses)
        else:
            losses.sum().backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


# Every torch_moo optimizer with small settings under which its own state moves within a few
# steps; the protocol tests run for each. A one-objective variant is built from the same entry.
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "ChebyshevALM": (ChebyshevALM, dict(preference=[0.3, 0.7], outer_every=3, penalty=5.0)),
    # constant weights: no method state of its own
    "FixedWeighting": (FixedWeighting, dict(weights=[0.2, 0.8])),
    "MinMaxWeighting": (MinMaxWeighting, dict(update_every=2)),
    # per-objective moments give it a method state that moves every step
    "MultiGradientDescent": (MultiGradientDescent, dict(moments=(0.9, 0.99))),
    # backward(losses) then step() is its MGDA step; step(closure) explores (tests/unit/test_tangent.py)
    "ParetoTangentExplorer": (ParetoTangentExplorer, dict(base=torch.optim.Adam)),
}
# Options a one-objective variant changes: with moments MGDA runs Adam's direction, not the base's.
GRADIENT_SPACE = {"MultiGradientDescent", "ParetoTangentExplorer"}
ONE_OBJECTIVE: dict[str, dict[str, Any]] = {
    "ChebyshevALM": {"preference": [1.0]},
    "FixedWeighting": {"weights": [1.0]},
    "MultiGradientDescent": {"moments": None},
}
# Options under which each method's own state moves at every step.
EVERY_STEP: dict[str, dict[str, Any]] = {
    "ChebyshevALM": {"outer_every": 1},
    "FixedWeighting": {},
    "MinMaxWeighting": {"update_every": 1},
    "MultiGradientDescent": {},
    "ParetoTangentExplorer": {},
}


def make(model: nn.Module | Iterable[Any], method: str = "ChebyshevALM", num_objectives: int = 2, **kwargs: Any) -> Any:
    """The :data:`OPTIMIZERS` entry ``method`` at ``lr=1e-2`` over ``model``'s parameters (or the given ones)."""
    cls, defaults = OPTIMIZERS[method]
    options = dict(defaults, lr=1e-2)
    if num_objectives == 1:
        options.update(ONE_OBJECTIVE.get(method, {}))
    options.update(kwargs)
    params = model.parameters() if isinstance(model, nn.Module) else model
    return cls(params, num_objectives=num_objectives, **options)


def sparse_for(model: nn.Module, opt: torch.optim.Optimizer, **kwargs: Any) -> SparsityController:
    """A SparsityController over ``model`` at half density, uniform, gradient regrowth every other step."""
    options = dict(sparsity=0.5, distribution="uniform", regrow="gradient", update_every=2)
    return SparsityController(opt, model=model, **{**options, **kwargs})


def method_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """A copy of the method's own entry of ``opt.state_dict()``."""
    state = opt.state_dict()["torch_moo"]["state"]
    return {key: value.clone() if isinstance(value, torch.Tensor) else value for key, value in state.items()}


def assert_same_state_dict(first: Any, second: Any, path: str = "state", equal_nan: bool = False) -> None:
    """``first`` and ``second`` hold the same structure: the same types; dicts with the same keys in the
    same order, lists and tuples of the same length, recursed; tensors of the same dtype and device equal
    by :func:`torch.equal` (with ``equal_nan``, NaN in the same places counts as equal); other values
    equal by ``==``. ``path`` names the first mismatch."""
    assert type(first) is type(second), f"{path}: {type(first).__name__} != {type(second).__name__}"
    if isinstance(first, torch.Tensor):
        assert first.dtype == second.dtype and first.device == second.device, f"{path}: {first} != {second}"
        same = torch.equal(first, second) or (
            equal_nan
            and first.shape == second.shape
            and torch.equal(first.isnan(), second.isnan())
            and torch.equal(first.nan_to_num(), second.nan_to_num())
        )
        assert same, f"{path}: {first} != {second}"
    elif isinstance(first, dict):
        assert list(first) == list(second), f"{path}: keys {list(first)} != {list(second)}"
        for key in first:
            assert_same_state_dict(first[key], second[key], f"{path}[{key!r}]", equal_nan)
    elif isinstance(first, (list, tuple)):
        assert len(first) == len(second), f"{path}: length {len(first)} != {len(second)}"
        for index, (a, b) in enumerate(zip(first, second)):
            assert_same_state_dict(a, b, f"{path}[{index}]", equal_nan)
    else:
        assert first == second, f"{path}: {first!r} != {second!r}"


def snapshot(model: nn.Module, opt: torch.optim.Optimizer, sparse: SparsityController | None = None) -> dict[str, Any]:
    """Everything a fault must leave alone: parameters, ``.grad``, the state dicts, the masks, and what
    ``backward`` recorded, seen through :func:`next_step`. Compare two with :func:`assert_same_state_dict`."""
    return {
        "params": flat_parameters(model),
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "opt": copy.deepcopy(opt.state_dict()),
        "sparse": None if sparse is None else copy.deepcopy(sparse.state_dict()),
        "next step": next_step(model, opt, sparse),
    }


def next_step(model: nn.Module, opt: torch.optim.Optimizer, sparse: SparsityController | None = None) -> Any:
    """What ``opt.step()`` would do now, taken on copies: the parameters and state dicts after it, or
    the message of the ``RuntimeError`` it raises (a step with no backward to use)."""
    model_copy, opt_copy, sparse_copy = copy_with_grads((model, opt, sparse))
    try:
        type(opt_copy).step(opt_copy)  # not the instance's: a scheduler's wrapper there steps the original
    except RuntimeError as error:
        return str(error)
    return {
        "params": flat_parameters(model_copy),
        "opt": opt_copy.state_dict(),
        "sparse": None if sparse_copy is None else sparse_copy.state_dict(),
    }


def copy_with_grads(objects: Sequence[Any]) -> Any:
    """``copy.deepcopy(objects)`` with each copied module's ``.grad`` copied too (a copied Parameter drops it)."""
    copies = copy.deepcopy(objects)
    for obj, obj_copy in zip(objects, copies):
        if isinstance(obj, nn.Module):
            for p, q in zip(obj.parameters(), obj_copy.parameters()):
                q.grad = None if p.grad is None else p.grad.clone()
    return copies


def safe_round_trip(state: Any) -> Any:
    """``state`` through :func:`torch.save` and the safe loader (``weights_only=True``), as from a checkpoint file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def state_dicts(objects: Sequence[Any]) -> list[Any]:
    """Copies of the state dicts of ``objects`` (``None`` for a ``None``)."""
    return [None if obj is None else copy.deepcopy(obj.state_dict()) for obj in objects]


def through_checkpoint(objects: Sequence[Any], build: Callable[[], Sequence[Any]]) -> Sequence[Any]:
    """Fresh ``build()`` objects (their modules' weights moved away from the saved ones) that load the
    state dicts of ``objects`` through :func:`safe_round_trip`, in order."""
    saved = safe_round_trip(state_dicts(objects))
    resumed = build()
    with torch.no_grad():
        for obj in resumed:
            if isinstance(obj, nn.Module):
                for p in obj.parameters():
                    p.add_(1.0)
    for obj, state in zip(resumed, saved):
        if obj is not None:
            obj.load_state_dict(state)
    return resumed


def assert_resumes(
    build: Callable[[], Sequence[Any]],
    run: Callable[[Sequence[Any], int, int], None],
    steps: int,
    transfer: Callable[[Sequence[Any]], Sequence[Any]] | None = None,
    state: Callable[[Sequence[Any]], Any] = state_dicts,
) -> tuple[Sequence[Any], Sequence[Any]]:
    """Objects trained ``steps`` steps straight equal, bit for bit (every ``state(objects)``, by default
    every state dict), objects trained ``steps // 2`` steps, carried over by ``transfer`` (by default
    :func:`through_checkpoint` into fresh ``build()`` objects) and trained the rest.

    ``build()`` gives the objects, models first (then optimizers, controllers, schedulers, scalers,
    ``None`` for one left out); ``run(objects, start, stop)`` trains steps ``start`` to ``stop - 1``.
    Returns the straight and the resumed objects, for checks of their own.
    """
    straight = build()
    run(straight, 0, steps)
    first = build()
    run(first, 0, steps // 2)
    resumed = through_checkpoint(first, build) if transfer is None else transfer(first)
    run(resumed, steps // 2, steps)
    assert_same_state_dict(state(straight), state(resumed))
    return straight, resumed


def assert_scaler_skips(step: Callable[[], None], scaler: torch.amp.GradScaler, *objects: Any) -> None:
    """``step()``, a scaled step whose gradients overflow, backs the scaler off once and leaves every
    state dict of ``objects`` (models, optimizers, controllers) as it was."""
    scale = scaler.get_scale()
    before = state_dicts(objects)
    step()
    assert scaler.get_scale() == scale * scaler.get_backoff_factor()
    assert_same_state_dict(before, state_dicts(objects))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(worker: Callable[..., None], *args: Any, deadline: float = 120.0) -> dict[int, Any]:
    """Run ``worker(rank, 2, port, *args, results)`` on two spawned processes; the results by rank.

    The workers must finish within ``deadline`` seconds (spawning and importing torch included): a
    rank that hangs in a collective fails the test instead of blocking the suite."""
    manager = mp.get_context("spawn").Manager()  # kept alive until the results are copied out
    results = manager.dict()
    context = mp.start_processes(
        worker, args=(2, free_port(), *args, results), nprocs=2, start_method="spawn", join=False
    )
    end = time.monotonic() + deadline
    try:
        while not context.join(timeout=max(0.1, min(5.0, end - time.monotonic()))):
            if time.monotonic() > end:
                pytest.fail(f"the workers did not finish within {deadline:.0f} s (a rank hangs in a collective)")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()  # only the workers this call started
                process.join()
    return dict(results)
