"""SparsityController on real optimizers: exact zeros, state resets, schedules, checkpoints (its refused
constructions and loads: tests/unit/test_error_tables.py)."""

import copy

import pytest
import torch
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

import torch_moo as tm
from tests.helpers import assert_resumes
from torch_moo.sparsity import CubicSparsity, SparsityController


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 2))


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(16, 10, generator=generator)
    return x, torch.stack([x[:, 0] * x[:, 1], x[:, 2].sin()], dim=1)


def train_mlp(model, opt, steps, start=0, scaler=None):
    """``steps`` plain steps of the MLP regression from batch ``start`` (through ``scaler`` if given)."""
    for step in range(start, start + steps):
        x, y = data(step)
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()


def weights(model):
    return [model[0].weight, model[2].weight, model[4].weight]


def active_counts(controller):
    return [int(mask.sum()) for mask in controller.masks.values()]


TORCH_OPTIMIZERS = {
    "Adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "SGD-nesterov": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5),
}


@pytest.mark.parametrize("regrow", [None, "random", "gradient", "exploration"])
@pytest.mark.parametrize("name", TORCH_OPTIMIZERS)
def test_pruned_weights_and_their_optimizer_state_are_exactly_zero_after_every_step(name, regrow):
    model = mlp()
    opt = TORCH_OPTIMIZERS[name](model.parameters())
    sparse = SparsityController(opt, model=model, sparsity=0.8, regrow=regrow, update_every=3)
    counts = active_counts(sparse)
    for step in range(10):
        train_mlp(model, opt, 1, start=step)
        for w, mask in zip(weights(model), sparse.masks.values()):
            assert torch.all(w[~mask] == 0)
            for value in opt.state[w].values():
                if value.shape == w.shape:
                    assert torch.all(value[~mask] == 0), "optimizer state revives a pruned weight"
        if regrow is not None:
            assert active_counts(sparse) == counts
    assert sparse.step_count == 10


def test_state_of_grown_weights_restarts_from_zero():
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.999))
    sparse = SparsityController(opt, model=model, sparsity=0.7, regrow="gradient", update_every=4)
    train_mlp(model, opt, 4)
    before = sparse.masks
    x, y = data(4)
    opt.zero_grad()
    (model(x) - y).square().mean().backward()
    grads = [w.grad.clone() for w in weights(model)]
    opt.step()  # the update step: drop, grow, then Adam's step
    grown_any = False
    for w, grad, old, new in zip(weights(model), grads, before.values(), sparse.masks.values()):
        grown = new & ~old
        grown_any |= bool(grown.any())
        # a reset first moment is (1 - beta1) * g after one step, exactly
        torch.testing.assert_close(opt.state[w]["exp_avg"][grown], 0.1 * grad[grown], rtol=1e-6, atol=0)
    assert grown_any


def test_closure_steps_equal_plain_steps_and_keep_masks():
    models = [mlp(), mlp()]
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in models]
    controllers = [
        SparsityController(
            o, model=m, sparsity=0.8, regrow="gradient", update_every=2, generator=torch.Generator().manual_seed(0)
        )
        for o, m in zip(opts, models)
    ]
    for step in range(6):
        x, y = data(step)
        train_mlp(models[0], opts[0], 1, start=step)

        def closure(x=x, y=y):
            opts[1].zero_grad()
            loss = (models[1](x) - y).square().mean()
            loss.backward()
            return loss

        opts[1].step(closure)
    for a, b in zip(weights(models[0]), weights(models[1])):
        assert torch.equal(a, b)
    for w, mask in zip(weights(models[1]), controllers[1].masks.values()):
        assert torch.all(opts[1].state[w]["exp_avg"][~mask] == 0)


def test_lbfgs_closure_is_masked_on_every_evaluation():
    model = mlp()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
    sparse = SparsityController(opt, model=model, sparsity=0.9)
    x, y = data(0)

    def closure():
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    for w, mask in zip(weights(model), sparse.masks.values()):
        assert torch.all(w[~mask] == 0) and torch.any(w[mask] != 0)


@pytest.mark.parametrize("method", ["ChebyshevALM", "MinMaxWeighting"])
def test_torch_moo_optimizers_are_masked_through_their_base(method):
    model = mlp()
    if method == "ChebyshevALM":
        opt = tm.ChebyshevALM(model.parameters(), num_objectives=3, preference=[0.2, 0.4, 0.4], lr=1e-2)
    else:
        opt = tm.MinMaxWeighting(model.parameters(), num_objectives=3, lr=1e-2)
    sparse = SparsityController(opt, model=model, sparsity=0.8, regrow="exploration", update_every=2)
    counts = active_counts(sparse)
    for step in range(7):
        x, y = data(step)
        opt.zero_grad()
        out = model(x)
        losses = torch.stack([tm.objectives.l1(model, reduction="mean"), *(out - y).square().mean(0)])
        opt.backward(losses)
        opt.step()
    assert sparse.step_count == 7 and active_counts(sparse) == counts
    for w, mask in zip(weights(model), sparse.masks.values()):
        assert torch.all(w[~mask] == 0)


def test_gradual_magnitude_pruning_follows_the_cubic_schedule():
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = CubicSparsity(final=0.9, begin=0, end=8)
    sparse = SparsityController(opt, model=model, sparsity=schedule, distribution="uniform", update_every=2)
    assert sparse.sparsity() == pytest.approx(0.0)
    for step in range(0, 10, 2):
        train_mlp(model, opt, 2, start=step)
        # the update at step t runs before step t's optimizer step: after 2j steps the target of t = 2(j-1)
        expected = schedule(step) if step else 0.0
        assert sparse.sparsity() == pytest.approx(expected, abs=1 / 512 + 1e-9)  # rounding: one weight per layer
    train_mlp(model, opt, 1, start=10)
    assert sparse.sparsity() == pytest.approx(0.9, abs=1e-3)


def test_threshold_prunes_small_weights_after_every_step_for_good():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sparse = SparsityController(opt, model=model, sparsity=0.0, threshold=0.05)
    previous = {k: v.clone() for k, v in sparse.masks.items()}
    for step in range(5):
        train_mlp(model, opt, 1, start=step)
        for (name, mask), w in zip(sparse.masks.items(), weights(model)):
            assert not torch.any(mask & ~previous[name]), "a pruned weight came back"
            assert torch.all(w[mask].abs() > 0.05) and torch.all(w[~mask] == 0)
        previous = {k: v.clone() for k, v in sparse.masks.items()}
    assert sparse.sparsity() > 0.1


@pytest.mark.parametrize("structure, dim", [("row", 1), ("column", 0)])
def test_structured_masks_prune_whole_rows_or_columns(structure, dim):
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sparse = SparsityController(
        opt, model=model, sparsity=0.5, structure=structure, regrow="gradient", distribution="uniform", update_every=2
    )
    train_mlp(model, opt, 5)
    for w, mask in zip(weights(model), sparse.masks.values()):
        pruned = (w == 0).all(dim=dim)
        units = mask.any(dim=dim)
        assert torch.equal(pruned, ~units)
        assert int(units.sum()) == round(0.5 * units.numel())


def test_distribution_dict_overrides_named_layers():
    model = mlp()
    opt = torch.optim.Adam(model.parameters())
    sparse = SparsityController(opt, model=model, sparsity=0.5, distribution={"4.weight": 0.0})
    assert sparse.layer_sparsity() == pytest.approx({"0.weight": 0.5, "2.weight": 0.5, "4.weight": 0.0})


def test_remove_detaches_the_hooks():
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sparse = SparsityController(opt, model=model, sparsity=0.9)
    masks = sparse.masks
    sparse.remove()
    train_mlp(model, opt, 2)
    assert all(bool((w[~mask] != 0).any()) for w, mask in zip(weights(model), masks.values()))
    assert sparse.step_count == 0


@pytest.mark.parametrize("regrow", ["random", "exploration"])
def test_resume_is_bit_exact(regrow):
    def build():
        model = mlp()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        sparse = SparsityController(
            opt,
            model=model,
            sparsity=0.8,
            regrow=regrow,
            update_every=2,
            exploration=None,
            generator=torch.Generator().manual_seed(3),
        )
        return model, opt, sparse

    assert_resumes(
        build, lambda objects, start, stop: train_mlp(objects[0], objects[1], stop - start, start=start), steps=12
    )


def test_export_computes_what_the_masked_model_computes():
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sparse = SparsityController(opt, model=model, sparsity=0.9, regrow="gradient", update_every=2)
    train_mlp(model, opt, 4)
    exported = sparse.export()
    x, _ = data(99)
    with torch.no_grad():
        # float32 sums of at most 32 products of O(1) terms, reordered by the sparse kernel
        torch.testing.assert_close(exported(x), model(x), rtol=1e-5, atol=1e-6)
    assert any(isinstance(module, tm.sparsity.SparseLinear) for module in exported.modules())


def test_default_parameters_are_the_optimizers_matrices():
    model = mlp()
    opt = torch.optim.Adam(model.parameters())
    sparse = SparsityController(opt, sparsity=0.5)
    assert sparse.names == ["params[0]", "params[1]", "params[2]"]
    assert [tuple(m.shape) for m in sparse.masks.values()] == [(32, 10), (16, 32), (2, 16)]


def test_a_controller_built_from_a_state_dict_keeps_restored_weights():
    # Resuming where the weights are restored first (Lightning): the saved masks are the start,
    # so no weight the checkpoint kept is pruned by a new random topology.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sparse = SparsityController(
        opt, model=model, sparsity=0.75, regrow="gradient", update_every=2, generator=torch.Generator().manual_seed(1)
    )
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(4, 8)).square().sum().backward()
        opt.step()
    saved, weights = sparse.state_dict(), copy.deepcopy(model.state_dict())
    restored = copy.deepcopy(model)
    restored.load_state_dict(weights)
    resumed = SparsityController(
        torch.optim.Adam(restored.parameters(), lr=1e-2),
        model=restored,
        sparsity=0.75,
        regrow="gradient",
        update_every=2,
        generator=torch.Generator().manual_seed(2),
        state_dict=saved,
    )
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(), weights.values()))
    assert all(torch.equal(a, b) for a, b in zip(resumed.masks.values(), sparse.masks.values()))
    assert resumed.step_count == sparse.step_count
    fresh = copy.deepcopy(model)
    SparsityController(
        torch.optim.Adam(fresh.parameters(), lr=1e-2),
        model=fresh,
        sparsity=0.75,
        regrow="gradient",
        update_every=2,
        generator=torch.Generator().manual_seed(2),
    )
    assert not all(
        torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), weights.values())
    )  # the trap it avoids


def whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def sharded_mlp() -> nn.Sequential:
    model = mlp()
    for layer in model[::2]:
        fully_shard(layer)
    return fully_shard(model)


SHARDED_MODES = {
    "magnitude": dict(sparsity=0.8),
    "threshold": dict(sparsity=0.5, threshold=0.05),
    "gradual": dict(sparsity=CubicSparsity(0.8, 0, 6), update_every=2),
    "random": dict(sparsity=0.8, regrow="random", update_every=2),
    "exploration": dict(sparsity=0.8, regrow="exploration", exploration=0.1, update_every=2),
    "row": dict(sparsity=0.5, regrow="gradient", update_every=2, drop_fraction=0.5, structure="row"),
}


@pytest.mark.parametrize("mode", SHARDED_MODES)
def test_dtensor_parameters_train_exactly_as_plain_ones(one_rank, mode):
    # one rank: FSDP2's reductions are identities, so every mask and weight is bit-identical
    # (two ranks against one process: tests/integration/test_fsdp_sparsity.py)
    runs = []
    for model in (mlp(), sharded_mlp()):
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        generator = torch.Generator().manual_seed(3)
        controller = SparsityController(opt, model=model, generator=generator, **SHARDED_MODES[mode])
        train_mlp(model, opt, 5)
        runs.append((model, opt, controller))
    (plain, plain_opt, expected), (sharded, sharded_opt, controller) = runs
    for name, mask in controller.masks.items():
        assert isinstance(mask, DTensor) and mask.placements == sharded.get_parameter(name).placements
        assert torch.equal(mask.full_tensor(), expected.masks[name]), name
    for a, b in zip(plain.parameters(), sharded.parameters()):
        assert torch.equal(a, b.full_tensor())
    for a, b in zip(weights(plain), weights(sharded)):
        for key, value in plain_opt.state[a].items():
            assert torch.equal(value, whole(sharded_opt.state[b][key])), key
    assert controller.sparsity() == expected.sparsity()
    # the plain path takes a float32 mean, the sharded one count / size in float64: 1e-6 covers float32's rounding
    assert controller.layer_sparsity() == pytest.approx(expected.layer_sparsity(), rel=1e-6)
    if mode in ("random", "exploration", "row"):
        assert controller.coverage() == expected.coverage()


def test_dtensor_state_dicts_hold_dtensors_and_load_from_plain_and_sharded_states(one_rank):
    options = dict(sparsity=0.8, regrow="exploration", update_every=2)
    plain = mlp()
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-2)
    plain_controller = SparsityController(plain_opt, model=plain, generator=torch.Generator().manual_seed(3), **options)
    train_mlp(plain, plain_opt, 5)
    plain_state = plain_controller.state_dict()  # today's format: whole plain tensors

    model = sharded_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    controller = SparsityController(opt, model=model, state_dict=plain_state, **options)  # each rank cuts its piece
    saved = controller.state_dict()
    for mask, counter, name in zip(saved["masks"], saved["active_updates"], controller.names):
        placements = model.get_parameter(name).placements
        assert isinstance(mask, DTensor) and mask.placements == placements
        assert isinstance(counter, DTensor) and counter.placements == placements
    assert_same_state(saved, plain_state)
    copy_ = mlp()
    other = SparsityController(torch.optim.Adam(copy_.parameters()), model=copy_, **options)  # plain, from DTensors
    other.load_state_dict(saved)
    assert_same_state(other.state_dict(), plain_state)
    controller.remove()
    again = SparsityController(opt, model=model, **options)  # a DTensor controller from DTensors
    again.load_state_dict(saved)
    assert_same_state(again.state_dict(), plain_state)
    with pytest.raises(ValueError, match="gather them into an unsharded model"):
        again.export()


def assert_same_state(state, expected):
    """Controller state dicts (plain or of DTensors) alike, tensors compared whole (generators aside)."""
    assert state.keys() == expected.keys()
    for key, value in state.items():
        if key in ("masks", "active_updates"):
            assert all(torch.equal(whole(a), b) for a, b in zip(value, expected[key], strict=True)), key
        elif key != "generator":
            assert value == expected[key], key
