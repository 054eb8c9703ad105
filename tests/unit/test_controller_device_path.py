"""SparsityController on the accelerator's path (issue 15): what a training step dispatches between
topology updates and at one, against plain foreach Adam, and masks identical to the CPU path.

Counts are taken on the CPU under ``device_path()`` (tests/counting.py); the base optimizer's own
host reads (Adam keeps ``step`` on the CPU) are the baseline's, so the controller's are the difference.
"""

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from torch import nn

from tests.counting import Dispatches
from torch_moo._device import device_path
from torch_moo.objectives import growl
from torch_moo.sparsity import CubicSparsity, SparsityController, drop_and_grow, top_count
from torch_moo.sparsity.masks import unit_norms

UPDATE = 3  # update_every: steps 3 and 6 update the topology
MODES = {
    "magnitude": dict(sparsity=0.8),
    "gradual": dict(sparsity=CubicSparsity(0.8, 0, 30), update_every=UPDATE),
    "threshold": dict(sparsity=0.5, threshold=0.05),
    "random": dict(sparsity=0.8, regrow="random", update_every=UPDATE, stop_after=100),
    "gradient": dict(sparsity=0.8, regrow="gradient", update_every=UPDATE, stop_after=100),
    "exploration": dict(sparsity=0.8, regrow="exploration", exploration=0.1, update_every=UPDATE, stop_after=100),
}
# Launches a controller adds to a step (budgets, measured with torch 2.13):
# between updates, the pre-hook's foreach multiplication of the gradients and the post-hook's of the
# weights; the threshold rule 6 more foreach ops (|w|, - tau, sign, clamp, weights, optimizer state),
# whatever the number of layers.
BETWEEN = dict.fromkeys(MODES, 2) | {"threshold": 8}
# at an update, per masked layer: scores, one or two top_count selections (11 ops each), the
# multipliers and the state reset; plus 4 for the whole step.
PER_LAYER = {"magnitude": 0, "threshold": 0, "gradual": 14, "random": 33, "gradient": 33, "exploration": 40}


def mlp(depth: int) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(12, 24)]
    for _ in range(depth - 2):
        layers += [nn.ReLU(), nn.Linear(24, 24)]
    return nn.Sequential(*layers, nn.ReLU(), nn.Linear(24, 3))


def train(depth: int, mode: str | None, steps: int, **extra) -> tuple[nn.Sequential, SparsityController | None, list]:
    """``steps`` steps of foreach Adam (with a controller of ``mode``); each step's (launches, host reads)."""
    model = mlp(depth)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, foreach=True)
    controller = None
    if mode is not None:
        generator = torch.Generator().manual_seed(1)
        controller = SparsityController(opt, model=model, generator=generator, **MODES[mode], **extra)
    counts = []
    for step in range(steps):
        x = torch.randn(8, 12, generator=torch.Generator().manual_seed(step))
        with Dispatches() as dispatched:
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        counts.append((dispatched.launches, dispatched.host_reads))
    return model, controller, counts


@pytest.mark.parametrize("depth", [3, 6])
@pytest.mark.parametrize("mode", MODES)
def test_a_step_adds_a_few_launches_and_no_host_read(mode, depth):
    with device_path():
        *_, adam = train(depth, None, UPDATE + 1)
        *_, sparse = train(depth, mode, UPDATE + 1)
    (adam_between, adam_reads), (adam_update, adam_update_reads) = adam[UPDATE - 1], adam[UPDATE]
    (between, reads), (update, update_reads) = sparse[UPDATE - 1], sparse[UPDATE]
    assert reads == adam_reads  # no host read between updates
    assert update_reads == adam_update_reads  # nor at an update (the budget was 1): active counts are kept
    assert between - adam_between <= BETWEEN[mode]
    assert update - adam_update <= BETWEEN[mode] + 2 + PER_LAYER[mode] * depth


def test_the_threshold_rule_costs_the_same_launches_for_any_number_of_layers():
    with device_path():
        extra = [train(depth, "threshold", 3)[2][-1][0] - train(depth, None, 3)[2][-1][0] for depth in (3, 6)]
    assert extra == [BETWEEN["threshold"]] * 2


@pytest.mark.parametrize(
    "mode, structure", [*((mode, "element") for mode in MODES), ("random", "row"), ("threshold", "column")]
)
def test_masks_and_weights_on_the_device_path_equal_the_cpu_path_bit_for_bit(mode, structure):
    steps = 2 * UPDATE + 1  # two topology updates
    cpu_model, cpu, _ = train(3, mode, steps, structure=structure)
    with device_path():
        device_model, device, _ = train(3, mode, steps, structure=structure)
    assert cpu is not None and device is not None
    for name, mask in cpu.masks.items():
        assert torch.equal(mask, device.masks[name]), name
    for a, b in zip(cpu_model.parameters(), device_model.parameters()):
        assert torch.equal(a, b)
    if mode in ("gradual", "random", "gradient", "exploration"):  # the updates did move the masks
        initial = train(3, mode, 1, structure=structure)[1]
        assert initial is not None
        assert any(not torch.equal(mask, initial.masks[name]) for name, mask in cpu.masks.items())


scores = st.lists(st.sampled_from([0.0, -0.0, 1.0, 2.0, -1.0, math.inf, -math.inf, math.nan]), min_size=1, max_size=40)


@given(scores, st.data())
def test_top_count_on_the_device_path_selects_as_on_the_cpu_and_as_a_stable_sort(values, data):
    flat = torch.tensor(values)
    count = data.draw(st.integers(0, len(values)))
    rows = data.draw(st.sampled_from([d for d in (1, 2, 4) if len(values) % d == 0]))
    shaped = flat.view(rows, -1)
    with device_path():
        on_device = top_count(shaped, count)
    reference = torch.zeros(len(values), dtype=torch.bool)
    order = torch.sort(torch.nan_to_num(flat, nan=-math.inf), descending=True, stable=True).indices
    reference[order[:count]] = True  # ties to the lower index, NaN last
    assert torch.equal(on_device, top_count(shaped, count))
    assert torch.equal(on_device.flatten(), reference)


def test_drop_and_grow_with_the_known_active_count_reads_nothing():
    generator = torch.Generator().manual_seed(0)
    mask = top_count(torch.rand(50, generator=generator), 20)
    magnitude, growth = torch.rand(50, generator=generator), torch.rand(50, generator=generator)
    with device_path(), Dispatches() as dispatched:
        new = drop_and_grow(mask, magnitude, growth, 6, 20)
    assert dispatched.host_reads == 0
    assert torch.equal(new, drop_and_grow(mask, magnitude, growth, 6))


@pytest.mark.parametrize("structure, threshold", [("element", 0.08), ("row", 0.6)])
def test_threshold_masks_follow_their_definition_every_step(structure, threshold):
    model = mlp(3)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2, foreach=True)
    stepped: list[list[torch.Tensor]] = []  # the weights after Adam's step, before the controller's hook
    opt.register_step_post_hook(lambda *_: stepped.append([p.detach().clone() for p in model[::2].parameters()]))
    controller = SparsityController(opt, model=model, sparsity=0.3, threshold=threshold, structure=structure)
    initial = controller.sparsity()
    weights = [layer.weight for layer in model[::2]]
    for step in range(6):
        before = list(controller.masks.values())
        x = torch.randn(8, 12, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        model(x).square().mean().backward()
        with device_path():
            opt.step()
        for old, new, w, p in zip(before, controller.masks.values(), stepped[-1][::2], weights):
            above = unit_norms(w * old, structure) > threshold  # the masked weights' units, as the rule sees them
            assert torch.equal(new, old & (above if structure == "element" else above.view(-1, 1).expand_as(w)))
            assert torch.all(p[~new] == 0)
            for value in opt.state[p].values():
                if value.shape == p.shape:
                    assert torch.all(value[~new] == 0)
    assert controller.sparsity() > initial  # the rule pruned beyond the initial masks


def test_growl_copies_list_weights_to_the_layers_once_per_call():
    layers = [torch.randn(6, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    with Dispatches() as dispatched:
        value = growl(layers, weights=[1.0] * 8)
    assert dispatched.ops["aten::_to_copy"] == 1  # before: one per layer
    expected = sum(torch.linalg.vector_norm(layer, dim=0).sum() for layer in layers)
    torch.testing.assert_close(value, expected)  # all weights 1: the sum of the column norms


def test_non_floating_optimizer_state_is_reset_where_units_change():
    # foreach multiplies the floating state; an integer one (8-bit optimizers keep such) is masked
    model = mlp(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seeded = torch.Generator().manual_seed(0)
    controller = SparsityController(opt, model=model, sparsity=0.8, regrow="random", update_every=1, generator=seeded)
    weights = [layer.weight for layer in model[::2]]
    for p in weights:
        opt.state[p]["visits"] = torch.ones_like(p, dtype=torch.int32)
    for step in range(2):  # the second step updates the topology
        before = list(controller.masks.values())
        x = torch.randn(8, 12, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        model(x).square().mean().backward()
        with device_path():
            opt.step()
    for p, old, new in zip(weights, before, controller.masks.values()):
        assert not torch.equal(old, new)
        assert torch.equal(opt.state[p]["visits"], (old & new).int())
