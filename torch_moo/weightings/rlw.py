"""RLW: random task weights, a new draw every step."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torch_moo._validation import check_count
from torch_moo.weightings._base import LossWeighting, Rules

__all__ = ["RLW"]


class RLW(LossWeighting):
    r"""Random Loss Weighting: softmax of standard normal draws.

    Lin, Ye, Zhang & Tsang, *Reasonable Effectiveness of Random Weighting: A Litmus Test
    for Multi-Task Learning*, TMLR 2022, as LibMTL's ``RLW`` with ``dist="Normal"``:

    .. math::

        w = \operatorname{softmax}(z), \qquad z \sim \mathcal N(0, I_k),

    a new :math:`z` every ``every`` steps. The call is pure: :math:`z` is drawn at construction
    and by :meth:`update` (for the next step), from the rule's own CPU
    :class:`torch.Generator` seeded with ``seed``; with the same seed as LibMTL's global one it
    draws LibMTL's weights. The draw goes to the rule's device by an asynchronous copy from pinned
    memory on CUDA. The generator's state is the buffer ``generator_state``, written when the
    state is saved, so that a resumed run draws the same weights bit for bit. The loss values
    and ``finite`` are not read: a skipped step still moves on to a new draw.

    Args:
        num_objectives: number of tasks :math:`k`.
        seed: the generator's seed, ``>= 0``.
        every: steps between draws; ``None``: only when :meth:`update` is called.

    Example:
        >>> rule = RLW(3, seed=0)
        >>> weights = rule(torch.ones(3))
        >>> bool(torch.isclose(weights.sum(), torch.tensor(1.0)))
        True
        >>> rule.observe(torch.ones(3))
        >>> bool((rule(torch.ones(3)) != weights).any())  # a new draw
        True
    """

    draw: Tensor
    generator_state: Tensor

    def __init__(self, num_objectives: int, *, seed: int = 0, every: int | None = 1) -> None:
        super().__init__(None if every is None else check_count(self.period, every))
        self.num_objectives = check_count("num_objectives", num_objectives)
        self.seed = check_count("seed", seed, minimum=0)
        self.generator = torch.Generator().manual_seed(seed)
        self.register_buffer("draw", torch.zeros(num_objectives))
        self.register_buffer("generator_state", torch.zeros_like(self.generator.get_state()))
        self.register_state_dict_pre_hook(_save_generator)  # a module-level function: the rule stays picklable
        self.apply_update()

    def forward(self, losses: Tensor) -> Tensor:
        return torch.softmax(self.draw, dim=-1).to(losses.dtype)

    def apply_update(self) -> None:
        draw = torch.randn(self.num_objectives, generator=self.generator)
        self.draw.copy_(draw.pin_memory() if self.draw.is_cuda else draw, non_blocking=True)

    def save_generator(self) -> None:
        """Write the generator's state to the buffer ``generator_state`` (done before each ``state_dict()``)."""
        self.generator_state.copy_(self.generator.get_state())

    def load_method_state(self, state: dict[str, Any]) -> None:
        """Load the state, the generator's included (one host copy of its state)."""
        super().load_method_state(state)
        self.generator.set_state(self.generator_state.cpu())

    def config(self) -> dict[str, Any]:
        return {**super().config(), "seed": self.seed}

    def state_rules(self, state: dict[str, Any]) -> Rules:
        try:  # the generator checks its own state (on load: a host copy is fine)
            torch.Generator().set_state(state["generator_state"].cpu())
            valid = True
        except RuntimeError:
            valid = False
        return {**super().state_rules(state), "generator_state": (valid, "a CPU generator state (get_state())")}


def _save_generator(module: RLW, prefix: str, keep_vars: bool) -> None:
    module.save_generator()
