"""Real layer types and parameter lists (issue 14, item 5): duplicates, transposed and grouped
layouts, sparse gradients, two controllers, and loss lists across dtypes and devices."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import torch_moo as tm
from torch_moo.sparsity import SparsityController
from torch_moo.sparsity.masks import Layout, expand, unit_count, unit_norms

DUPLICATE = "duplicate parameters"  # torch.optim's warning for a parameter listed twice in a group


# ------------------------------------------------------------------------------ the models
class Trunk(nn.Module):
    """One layer of a given type under test, then two linear heads: shared and own parameters."""

    def __init__(self, kind: str, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.kind = kind
        if kind == "linear":
            self.layer, width = nn.Linear(6, 5), 5
        elif kind == "conv":
            self.layer, width = nn.Conv2d(2, 4, 3, groups=2), 4 * 3 * 3
        elif kind == "conv_transpose":
            self.layer, width = nn.ConvTranspose2d(4, 6, 3, groups=2), 6 * 5 * 5
        elif kind in ("embedding", "sparse_embedding"):
            self.layer, width = nn.Embedding(12, 5, sparse=kind == "sparse_embedding"), 5
        elif kind == "lstm":
            self.layer, width = nn.LSTM(3, 4, batch_first=True), 4
        else:
            raise AssertionError(kind)
        self.heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(2))

    def inputs(self, step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(step)
        shapes = {"linear": (8, 6), "conv": (8, 2, 5, 5), "conv_transpose": (8, 4, 3, 3), "lstm": (8, 5, 3)}
        if self.kind in shapes:
            return torch.randn(shapes[self.kind], generator=generator)
        return torch.randint(0, 12, (8,), generator=generator)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        z = self.layer(x)
        return (z[0][:, -1] if self.kind == "lstm" else z).flatten(1)

    def losses(self, z: torch.Tensor) -> list[torch.Tensor]:
        return [(head(z).squeeze(1) - target).square().mean() for head, target in zip(self.heads, (1.0, -1.0))]


KINDS = ("linear", "conv", "conv_transpose", "embedding", "sparse_embedding", "lstm")


def dense(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_dense() if tensor.layout != torch.strided else tensor


def task_gradients(model: Trunk, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """The k x n Jacobian over ``params`` by plain autograd (densified, zeros where a task does not reach)."""
    losses = model.losses(model.features(x))
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True, materialize_grads=True)
        rows.append(torch.cat([dense(g).reshape(-1) for g in grads]))
    return torch.stack(rows)


# ------------------------------------------------------------------------- duplicates
def two_heads(seed: int = 0):
    torch.manual_seed(seed)
    trunk = nn.Linear(4, 3)
    heads = nn.ModuleList(nn.Linear(3, 1) for _ in range(2))
    return trunk, heads


def duplicate_backward(duplicate: bool, features: bool, **kwargs):
    trunk, heads = two_heads()
    params = [*trunk.parameters(), *heads.parameters()] + ([trunk.weight, heads[0].bias] if duplicate else [])
    opt = tm.MultiGradientDescent(params, num_objectives=2, lr=0.1, **kwargs)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    z = torch.tanh(trunk(x))
    alpha = opt.backward(
        [(h(z) - t).square().mean() for h, t in zip(heads, (1.0, -1.0))], features=z if features else None
    )
    return alpha, [p.grad.clone() for p in [*trunk.parameters(), *heads.parameters()]]


@pytest.mark.parametrize("features", [False, True])
@pytest.mark.parametrize("moments", [None, (0.9, 0.999)])
def test_mgda_counts_a_parameter_listed_twice_once(features, moments):
    if features and moments:
        pytest.skip("moments take the full mode")
    reference_alpha, reference = duplicate_backward(False, features, moments=moments)
    with pytest.warns(UserWarning, match=DUPLICATE):  # as torch.optim warns
        alpha, grads = duplicate_backward(True, features, moments=moments)
    torch.testing.assert_close(alpha, reference_alpha)
    for got, expected in zip(grads, reference):
        torch.testing.assert_close(got, expected)  # written once: not doubled, and the same Gram matrix


def test_explorer_moves_a_parameter_listed_twice_once():
    def explore(duplicate: bool) -> list[torch.Tensor]:
        trunk, heads = two_heads()
        params = [*trunk.parameters(), *heads.parameters()] + ([trunk.weight] if duplicate else [])
        opt = tm.ParetoTangentExplorer(params, num_objectives=2, beta=[1.0, 0.0], step_size=0.05)
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))

        def closure():
            z = torch.tanh(trunk(x))
            return torch.stack([(h(z) - t).square().mean() for h, t in zip(heads, (1.0, -1.0))])

        opt.step(closure)
        return [p.detach().clone() for p in [*trunk.parameters(), *heads.parameters()]]

    reference = explore(False)
    with pytest.warns(UserWarning, match=DUPLICATE):
        moved = explore(True)
    for got, expected in zip(moved, reference):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("method", ["chebyshev", "minmax"])
def test_loss_space_methods_treat_a_duplicate_as_torch_optim_does(method):
    """The gradient is autograd's; the base steps the listed parameter twice, as torch.optim's SGD does."""
    trunk, heads = two_heads()
    params = [*trunk.parameters(), *heads.parameters(), trunk.weight]
    kwargs = {"preference": [0.5, 0.5]} if method == "chebyshev" else {}
    cls = tm.ChebyshevALM if method == "chebyshev" else tm.MinMaxWeighting
    with pytest.warns(UserWarning, match=DUPLICATE):
        opt = cls(params, num_objectives=2, base=torch.optim.SGD, lr=0.1, **kwargs)
    x = torch.randn(8, 4)
    z = torch.tanh(trunk(x))
    losses = [(h(z) - t).square().mean() for h, t in zip(heads, (1.0, -1.0))]
    weights = opt.weights(losses)
    expected = torch.autograd.grad(sum(w * loss for w, loss in zip(weights, losses)), trunk.weight, retain_graph=True)[
        0
    ]
    before = trunk.weight.detach().clone()
    opt.backward(losses)
    torch.testing.assert_close(trunk.weight.grad, expected)
    opt.step()
    torch.testing.assert_close(trunk.weight.detach(), before - 2 * 0.1 * expected)  # SGD's two updates, as torch.optim


# --------------------------------------------------------------- every layer x every method
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["chebyshev", "minmax"])
def test_loss_space_methods_write_the_weighted_gradient_on_every_layer(kind, method):
    model = Trunk(kind)
    params = list(model.parameters())
    base = torch.optim.SparseAdam if kind == "sparse_embedding" else torch.optim.Adam
    opt_params = [model.layer.weight] if kind == "sparse_embedding" else params  # SparseAdam: the sparse table
    kwargs = {"preference": [0.3, 0.7]} if method == "chebyshev" else {}
    cls = tm.ChebyshevALM if method == "chebyshev" else tm.MinMaxWeighting
    opt = cls(opt_params, num_objectives=2, base=base, lr=1e-2, **kwargs)
    x = model.inputs(0)
    losses = model.losses(model.features(x))
    weights = opt.weights(losses)
    expected = weights @ task_gradients(model, x, opt_params)
    opt.backward(losses)
    torch.testing.assert_close(torch.cat([dense(p.grad).reshape(-1) for p in opt_params]), expected)
    before = [p.detach().clone() for p in opt_params]
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, opt_params))


def min_norm_kkt(jacobian: torch.Tensor, alpha: torch.Tensor) -> None:
    """The optimality of the min-norm point d = alpha @ J over the simplex: <d, g_i> >= ||d||^2 for every
    i, with equality where alpha_i > 0 (tolerance: float32 sums over a few hundred entries)."""
    d = alpha @ jacobian
    products, norm = jacobian @ d, d @ d
    tolerance = 1e-5 * jacobian.square().sum()
    assert (products >= norm - tolerance).all()
    assert (alpha * (products - norm)).abs().max() <= tolerance


@pytest.mark.parametrize("kind", KINDS)
def test_mgda_full_mode_is_mgda_on_every_layer(kind):
    model = Trunk(kind)
    opt = tm.MultiGradientDescent(model.parameters(), num_objectives=2, base=torch.optim.SGD, lr=1e-2)
    x = model.inputs(0)
    shared = list(model.layer.parameters())
    jacobian = task_gradients(model, x, shared)
    alpha = opt.backward(model.losses(model.features(x)))
    min_norm_kkt(jacobian, alpha)
    # a sparse gradient is densified: the full mode writes a dense .grad
    assert all(p.grad.layout == torch.strided for p in shared)
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in shared]), alpha @ jacobian)
    for head, loss in zip(model.heads, model.losses(model.features(x))):
        for p, own in zip(head.parameters(), torch.autograd.grad(loss, list(head.parameters()))):
            torch.testing.assert_close(p.grad, own)
    opt.step()


@pytest.mark.parametrize("kind", KINDS)
def test_mgda_features_mode_on_every_layer(kind):
    model = Trunk(kind)
    sparse = kind == "sparse_embedding"
    trunk_params = list(model.layer.parameters())
    opt = tm.MultiGradientDescent(
        trunk_params, num_objectives=2, base=torch.optim.SparseAdam if sparse else torch.optim.Adam, lr=1e-2
    )
    x = model.inputs(0)
    z = model.features(x)
    losses = model.losses(z)
    feature_rows = torch.stack([torch.autograd.grad(loss, z, retain_graph=True)[0].reshape(-1) for loss in losses])
    alpha = opt.backward(losses, features=z)
    min_norm_kkt(feature_rows, alpha)
    z = model.features(x)
    expected = torch.autograd.grad(z, trunk_params, grad_outputs=(alpha @ feature_rows).view_as(z))
    for p, g in zip(trunk_params, expected):
        assert p.grad.layout == g.layout  # the ordinary backward: SparseAdam gets its sparse gradient
        torch.testing.assert_close(dense(p.grad), dense(g))
    before = [p.detach().clone() for p in trunk_params]
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, trunk_params))


@pytest.mark.parametrize("kind", KINDS)
def test_explorer_step_on_every_layer(kind):
    """A tangent move of exactly ``step_size``; with a sparse embedding the very move of the dense one."""

    def explore(kind: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        model = Trunk(kind)
        params = list(model.parameters())
        before = [p.detach().clone() for p in params]
        opt = tm.ParetoTangentExplorer(
            params, num_objectives=2, beta=[1.0, 0.0], step_size=0.05, damping=0.1, max_iter=10
        )
        x = model.inputs(0)
        opt.step(lambda: torch.stack(model.losses(model.features(x))))
        return before, [p.detach() for p in params]

    before, after = explore(kind)
    moved = torch.cat([(a - b).reshape(-1) for a, b in zip(after, before)])
    # float32 parameter updates of size ~0.05 / sqrt(n): the norm is exact to a few ulps of the weights
    assert math.isclose(float(moved.norm()), 0.05, rel_tol=1e-4)
    if kind == "sparse_embedding":
        _, reference = explore("embedding")
        for got, expected in zip(after, reference):
            torch.testing.assert_close(got, expected)


# --------------------------------------------------------------------- the controller
SPARSE_KINDS = ("linear", "conv", "conv_transpose", "embedding", "sparse_embedding", "lstm")


def controller_optimizer(model: Trunk) -> torch.optim.Optimizer:
    if model.kind == "sparse_embedding":
        return torch.optim.SparseAdam([model.layer.weight], lr=1e-2)
    return torch.optim.Adam(model.parameters(), lr=1e-2)


def train_steps(model: Trunk, opt: torch.optim.Optimizer, steps: int) -> None:
    for step in range(steps):
        opt.zero_grad()
        sum(model.losses(model.features(model.inputs(step)))).backward()
        opt.step()


def check_exact(model: nn.Module, controller: SparsityController, target: float) -> None:
    """Pruned weights are exactly zero, the masks hold the budgets, and the sparsity is the target."""
    params = dict(model.named_parameters())
    for name, mask in controller.masks.items():
        assert mask.shape == params[name].shape
        assert (params[name][~mask] == 0).all(), name
    assert [int(m.sum()) for m in controller.state_dict()["masks"]] == controller.state_dict()["active"]
    assert abs(controller.sparsity() - target) < 0.1  # the rounding of small per-layer budgets


@pytest.mark.parametrize("kind", SPARSE_KINDS)
@pytest.mark.parametrize("structure", ["element", "row", "column"])
@pytest.mark.parametrize("regrow", [None, "random", "gradient", "exploration"])
def test_controller_trains_every_layer_with_exact_masks(kind, structure, regrow):
    model = Trunk(kind)
    opt = controller_optimizer(model)
    params = [p for p in model.layer.parameters() if p.dim() >= 2]
    controller = SparsityController(
        opt, model=model, params=params, sparsity=0.5, structure=structure, regrow=regrow, update_every=2
    )
    initial = [p.detach().clone() for p in params]
    train_steps(model, opt, 7)  # three topology updates with regrowth
    check_exact(model, controller, 0.5)
    assert controller.step_count == 7 and all(not torch.equal(a, p) for a, p in zip(initial, params))
    for p, mask in zip(params, controller.masks.values()):  # no optimizer state revives a pruned weight
        for value in opt.state[p].values():
            if isinstance(value, torch.Tensor) and value.shape == p.shape:
                assert (value[~mask] == 0).all()


def pruned_units(controller: SparsityController, name: str) -> torch.Tensor:
    return (~controller.state_dict()["masks"][controller.names.index(name)]).nonzero().flatten()


def test_row_of_a_transposed_convolution_is_an_output_channel():
    model = Trunk("conv_transpose")
    conv = model.layer  # ConvTranspose2d(4, 6, 3, groups=2): weight (4, 3, 3, 3)
    controller = SparsityController(
        controller_optimizer(model), model=model, params=[conv.weight], sparsity=0.5, structure="row"
    )
    pruned = pruned_units(controller, "layer.weight")
    assert len(pruned) == 3 and controller.state_dict()["masks"][0].numel() == 6  # six output channels, not four inputs
    y = conv(torch.randn(2, 4, 3, 3))
    for channel in pruned:  # a pruned output channel carries its bias alone
        torch.testing.assert_close(y[:, channel], conv.bias[channel].expand_as(y[:, channel]))
    assert all(y[:, c].std() > 0 for c in range(6) if c not in pruned.tolist())


def test_column_of_a_transposed_convolution_is_an_input_channel():
    model = Trunk("conv_transpose")
    conv = model.layer
    controller = SparsityController(
        controller_optimizer(model), model=model, params=[conv.weight], sparsity=0.5, structure="column"
    )
    pruned = pruned_units(controller, "layer.weight")
    assert controller.state_dict()["masks"][0].numel() == 4
    x = torch.randn(2, 4, 3, 3)
    changed = x.clone()
    changed[:, pruned] += 10.0  # the output ignores a pruned input channel
    torch.testing.assert_close(conv(changed), conv(x))


def test_column_of_a_grouped_convolution_is_an_input_channel():
    model = Trunk("conv")  # Conv2d(2, 4, 3, groups=2): weight (4, 1, 3, 3), one input channel per group
    conv = model.layer
    controller = SparsityController(
        controller_optimizer(model), model=model, params=[conv.weight], sparsity=0.5, structure="column"
    )
    pruned = pruned_units(controller, "layer.weight")
    assert (
        controller.state_dict()["masks"][0].numel() == 2 and len(pruned) == 1
    )  # two input channels (one unit per group)
    x = torch.randn(2, 2, 5, 5)
    changed = x.clone()
    changed[:, pruned] += 10.0
    torch.testing.assert_close(conv(changed), conv(x))


def test_embedding_rows_are_features_and_columns_are_tokens():
    model = Trunk("embedding")
    table = model.layer.weight  # (12 tokens, 5 features)
    opt = controller_optimizer(model)
    rows = SparsityController(opt, model=model, params=[table], sparsity=0.4, structure="row")
    features = pruned_units(rows, "layer.weight")
    assert rows.state_dict()["masks"][0].numel() == 5 and (table[:, features] == 0).all()
    rows.remove()
    columns = SparsityController(opt, model=model, params=[table], sparsity=0.5, structure="column")
    tokens = pruned_units(columns, "layer.weight")
    assert columns.state_dict()["masks"][0].numel() == 12 and (model.layer(tokens) == 0).all()


def test_lstm_masks_reach_the_flattened_weights():
    model = Trunk("lstm")
    opt = controller_optimizer(model)
    controller = SparsityController(
        opt, model=model, params=[model.layer.weight_ih_l0], sparsity=0.5, structure="column"
    )
    train_steps(model, opt, 3)
    (feature,) = pruned_units(controller, "layer.weight_ih_l0").tolist()[:1] or [None]
    assert feature is not None
    flat = model.layer._flat_weights[model.layer._flat_weights_names.index("weight_ih_l0")]
    assert (flat[:, feature] == 0).all()  # the tensor the LSTM kernel reads
    x = model.inputs(0)
    changed = x.clone()
    changed[..., feature] += 10.0  # a pruned input feature no longer reaches the output
    torch.testing.assert_close(model.layer(changed)[0], model.layer(x)[0])


def test_without_a_model_parameters_are_taken_as_out_by_in():
    conv = nn.ConvTranspose2d(4, 6, 3)
    opt = torch.optim.SGD(conv.parameters(), lr=0.1)
    controller = SparsityController(opt, params=[conv.weight], sparsity=0.5, structure="row")
    assert controller.state_dict()["masks"][0].numel() == 4  # dim 0, as documented: pass model= for the module's layout


def test_tied_weights_with_two_layouts_are_ambiguous_for_rows():
    embedding, head = nn.Embedding(10, 4), nn.Linear(4, 10)
    head.weight = embedding.weight  # (10, 4): the embedding's input tokens are the head's output neurons
    model = nn.ModuleDict({"embedding": embedding, "head": head})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"shared with 'head'.*ambiguous"):
        SparsityController(opt, model=model, sparsity=0.5, structure="row")
    SparsityController(opt, model=model, sparsity=0.5)  # elements are not ambiguous


def test_group_lasso_of_a_module_follows_the_layout():
    conv = nn.ConvTranspose2d(4, 6, 3, groups=2)
    module = nn.Sequential(conv)
    w = conv.weight.detach()  # (4, 3, 3, 3): output channel 3h + j is w[2h:2h+2, j]
    outputs = torch.stack([w[2 * (c // 3) : 2 * (c // 3) + 2, c % 3].norm() for c in range(6)])
    torch.testing.assert_close(tm.objectives.group_l2(module, structure="row"), outputs.sum())
    torch.testing.assert_close(tm.objectives.group_l2(module, structure="column"), w.flatten(1).norm(dim=1).sum())
    torch.testing.assert_close(
        tm.objectives.group_l2(conv.weight, structure="row"), w.flatten(1).norm(dim=1).sum()
    )  # a tensor: dim 0
    torch.testing.assert_close(
        tm.objectives.growl(module), 0.8 * w.flatten(1).norm(dim=1).max() + 0.2 * w.flatten(1).norm(dim=1).sum()
    )


# ------------------------------------------------------------------- sparse Embedding
@pytest.mark.parametrize("regrow", [None, "random", "gradient", "exploration"])
@pytest.mark.parametrize("structure", ["element", "row", "column"])
def test_sparse_embedding_with_sparse_adam_keeps_exact_masks(regrow, structure):
    torch.manual_seed(0)
    embedding = nn.Embedding(20, 6, sparse=True)
    opt = torch.optim.SparseAdam(embedding.parameters(), lr=0.1)
    controller = SparsityController(
        opt, model=embedding, sparsity=0.5, regrow=regrow, update_every=2, structure=structure
    )
    budget = list(controller.state_dict()["active"])
    for step in range(7):
        opt.zero_grad()
        embedding(torch.randint(0, 20, (8,), generator=torch.Generator().manual_seed(step))).sum().backward()
        opt.step()
    assert (
        controller.state_dict()["active"] == budget
        and [int(m.sum()) for m in controller.state_dict()["masks"]] == budget
    )
    assert controller.sparsity() == 0.5
    mask = controller.masks["weight"]
    assert (embedding.weight[~mask] == 0).all() and (embedding.weight[mask] != 0).any()
    for value in opt.state[embedding.weight].values():
        if isinstance(value, torch.Tensor) and value.shape == mask.shape:
            assert (value[~mask] == 0).all()


def test_a_failed_topology_update_leaves_the_masks(monkeypatch):
    model = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    controller = SparsityController(opt, model=model, sparsity=0.5, regrow="gradient", update_every=1)
    weights = [p.detach().clone() for p in model.parameters()]
    controller.step_count = 1  # the next step updates the topology
    calls = []

    def fail_on_the_second_layer(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("a failure inside the update")
        return original(*args)

    original = tm.sparsity.controller.drop_and_grow
    monkeypatch.setattr(tm.sparsity.controller, "drop_and_grow", fail_on_the_second_layer)
    before = controller.masks
    model(torch.randn(3, 6)).sum().backward()
    with pytest.raises(RuntimeError, match="inside the update"):
        opt.step()
    assert all(torch.equal(a, p) for a, p in zip(weights, model.parameters()))
    after = controller.masks
    assert after.keys() == before.keys() and all(torch.equal(before[k], m) for k, m in after.items())
    assert all(int(n.sum()) == 0 for n in controller.state_dict()["active_updates"])


# ------------------------------------------------------------------- two controllers
def test_a_second_controller_on_the_same_parameters_raises_until_the_first_is_removed():
    model = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = SparsityController(opt, model=model, params=[model[1].weight], sparsity=0.5)
    SparsityController(opt, model=model, params=[model[0].weight], sparsity=0.5)  # other parameters: fine
    weights = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"0\.weight \(shape \(4, 6\)\) is already masked by SparsityController"):
        SparsityController(opt, model=model, sparsity=0.8)
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters()))  # nothing changed
    first.remove()
    second = SparsityController(torch.optim.SGD(model[1].parameters(), lr=0.1), params=[model[1].weight], sparsity=0.75)
    assert second.sparsity() == 0.75


def test_the_attachment_registry_keeps_nothing_alive():
    model = nn.Linear(6, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    controller = SparsityController(opt, model=model, sparsity=0.5)
    gone = weakref.ref(controller)
    del controller, opt
    gc.collect()
    assert gone() is None  # the optimizer held it (its hooks); the registry does not
    SparsityController(torch.optim.SGD(model.parameters(), lr=0.1), model=model, sparsity=0.5)


# ------------------------------------------------------------------- loss lists
class _Stacked(Exception):
    """Raised by :class:`_StackSpy` with the loss vector ``backward`` stacked, to stop the call there."""


class _StackSpy(TorchFunctionMode):
    """Stops at the first ``torch.stack`` (the loss vector ``backward`` builds from a list) and reports it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func is torch.stack:
            raise _Stacked(result)
        return result


def stacked_losses(losses: list) -> torch.Tensor:
    """The loss vector that ``opt.backward(losses)`` forms from a list (observed through torch's function hooks)."""
    opt = tm.FixedWeighting([nn.Parameter(torch.zeros(1))], num_objectives=len(losses), nonfinite="propagate")
    with pytest.raises(_Stacked) as stacked, _StackSpy():
        opt.backward(losses)
    return stacked.value.args[0]


def test_a_number_in_the_loss_list_takes_the_tensors_device_and_promoted_dtype():
    half = torch.tensor(1.0, dtype=torch.float16, requires_grad=True)
    losses = stacked_losses([half, 2.0, torch.tensor([3.0], dtype=torch.float64, requires_grad=True)])
    assert losses.dtype == torch.float64 and losses.tolist() == [1.0, 2.0, 3.0]
    assert stacked_losses([half, 2.0]).dtype == torch.float16
    # the first tensor entry's device, not a default one ("meta" stands in for an accelerator)
    meta = stacked_losses([3.0, torch.ones((), device="meta", requires_grad=True), torch.ones(1, requires_grad=True)])
    assert meta.device.type == "meta" and meta.dtype == torch.float32


def test_an_optimizer_takes_a_number_among_its_losses():
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = tm.MultiGradientDescent([w], num_objectives=2, base=torch.optim.SGD, lr=0.1)
    opt.backward([w.square().sum(), 0.5])  # a constant objective reaches nothing: w is objective 0's own
    torch.testing.assert_close(w.grad, 2 * w.detach())
    opt = tm.MinMaxWeighting([w], num_objectives=2, base=torch.optim.SGD, lr=0.1)
    opt.zero_grad()
    weights = opt.backward([w.square().sum().double(), 0.5])
    torch.testing.assert_close(w.grad, weights[0] * 2 * w.detach())


@pytest.mark.skipif(torch.cuda.device_count() < 1, reason="needs a CUDA device")
def test_losses_on_two_devices_are_stacked_on_the_first_tensors_device():
    w_cpu = nn.Parameter(torch.tensor([1.0, -2.0]))
    w_gpu = nn.Parameter(torch.tensor([0.5], device="cuda"))
    opt = tm.MinMaxWeighting([w_gpu, w_cpu], num_objectives=3, base=torch.optim.SGD, lr=0.1)
    losses = [w_gpu.square().sum(), w_cpu.square().sum(), 1.0]
    assert stacked_losses(losses).device == w_gpu.device
    weights = opt.backward(losses)
    torch.testing.assert_close(w_cpu.grad, weights[1].cpu() * 2 * w_cpu.detach())
    torch.testing.assert_close(w_gpu.grad, weights[0] * 2 * w_gpu.detach())
    mgda = tm.MultiGradientDescent([w_gpu, w_cpu], num_objectives=2, base=torch.optim.SGD, lr=0.1)
    mgda.zero_grad()
    alpha = mgda.backward([(w_gpu.sum() + w_cpu.sum().cuda()) ** 2, (w_cpu.sum() - 1.0) ** 2])
    assert alpha.device == w_gpu.device and w_cpu.grad.device.type == "cpu"


# ------------------------------------------------------------------- the unit maps
@pytest.mark.parametrize("structure", ["row", "column"])
@pytest.mark.parametrize("layout", [Layout(0, 1), Layout(0, 3), Layout(1, 1), Layout(1, 2)])
def test_units_are_the_module_channels_and_expand_inverts_them(structure, layout):
    """Unit u's entries (units_first) are exactly where the expanded one-hot of u is set, and each
    channel of each group is one unit: the slices of a grouped weight counted by hand."""
    groups = layout.groups
    shape = torch.Size((6 * groups, 2, 3))  # (g * A, B, k)
    count = unit_count(shape, structure, layout)
    weight = torch.arange(shape.numel(), dtype=torch.float32).view(shape)
    axis = layout.outputs if structure == "row" else 1 - layout.outputs
    assert count == (shape[0] if axis == 0 else 2 * groups)
    rows = weight.shape[0] // groups
    for u in range(count):
        one_hot = torch.zeros(count, dtype=torch.bool)
        one_hot[u] = True
        mask = expand(one_hot, shape, structure, layout)
        by_hand = weight[u] if axis == 0 else weight[(u // 2) * rows : (u // 2 + 1) * rows, u % 2]
        assert torch.equal(weight[mask].sort().values, by_hand.flatten().sort().values)
        torch.testing.assert_close(unit_norms(weight, structure, layout)[u], by_hand.norm())


@pytest.mark.parametrize("structure", ["element", "row", "column"])
def test_unit_norms_of_a_sparse_gradient_sum_its_duplicates(structure):
    indices = torch.tensor([[0, 2, 0]])  # row 0 twice: an uncoalesced Embedding(sparse=True) gradient
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, -6.0]])
    sparse = torch.sparse_coo_tensor(indices, values, (4, 2), check_invariants=True)
    assert not sparse.is_coalesced()
    dense = torch.zeros(4, 2).index_add_(0, indices[0], values)
    torch.testing.assert_close(unit_norms(sparse, structure), unit_norms(dense, structure))
