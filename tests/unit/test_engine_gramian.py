"""GramianEngine: its Gram matrix equals J J^T from autograd, and losses.backward(w) then writes J^T w."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from torch_moo.functional import min_norm_weights
from torch_moo.gramian import GramianEngine

SCALES = [1.0, 1e-30, 1e30]


def jacobian(losses, params):
    """The k x P Jacobian from k autograd passes, in float64 (exact products of the float32 gradients)."""
    rows = [
        torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True, materialize_grads=True)
        for loss in losses
    ]
    return torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in rows]).double()


def assert_gram(gram, losses, params):
    reference = jacobian(losses, params)
    reference = reference @ reference.T
    assert gram.dtype == torch.float64 and gram.shape == reference.shape
    # Both sides sum float32 products at unit scale (one per layer here, the whole J there), in a
    # different order: they agree to a few float32 roundings (6e-8) of the largest diagonal entry,
    # times the sqrt of the terms summed (up to ~1e4): 1e-5 of it.
    torch.testing.assert_close(gram, reference, rtol=1e-5, atol=1e-5 * reference.diagonal().max().item())
    assert reference.diagonal().min() > 0  # a vacuous comparison would pass trivially


def head_losses(z, heads, scale):
    return torch.stack([head(z).square().mean() * scale for head in heads])


def mlp(rows, width, bias=True, norm=False):
    layers = [nn.Linear(6, width, bias=bias), nn.Tanh()]
    layers += [nn.LayerNorm(width)] if norm else []
    layers += [nn.Linear(width, width, bias=bias), nn.ReLU()]
    return nn.Sequential(*layers), torch.randn(rows, 6)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize(
    ("rows", "width"),
    [(4, 32), (128, 4)],  # fewer rows than width: the A A^T product; more: the per-layer Jacobian
    ids=["kernel", "blocks"],
)
@pytest.mark.parametrize(("bias", "norm"), [(True, False), (False, False), (True, True)], ids=["bias", "nobias", "ln"])
def test_mlp_gram_is_j_jt_over_the_trunk_only(scale, rows, width, bias, norm):
    torch.manual_seed(0)
    trunk, x = mlp(rows, width, bias, norm)
    heads = [nn.Linear(width, 1) for _ in range(3)]
    engine = GramianEngine(trunk)
    assert sorted(map(id, engine.parameters)) == sorted(map(id, trunk.parameters()))
    losses = head_losses(trunk(x), heads, scale)
    assert_gram(engine.gram(losses), losses, list(trunk.parameters()))


@pytest.mark.parametrize("scale", SCALES)
def test_convolutions_and_a_linear_layer_over_sequences(scale):
    torch.manual_seed(1)
    conv2d = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, stride=2), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2, bias=False))
    conv1d = nn.Conv1d(3, 5, 2, dilation=2)
    sequence = nn.Linear(5, 6)  # input batch x time x 5: its rows are batch * time
    engine = GramianEngine(conv2d, conv1d, sequence)
    y = conv2d(torch.randn(3, 2, 9, 9)).flatten(1)
    s = sequence(conv1d(torch.randn(3, 3, 7)).transpose(1, 2)).flatten(1)
    z = torch.cat((y, s), 1)
    losses = head_losses(z, [nn.Linear(z.shape[1], 1) for _ in range(4)], scale)
    assert_gram(engine.gram(losses), losses, [*conv2d.parameters(), *conv1d.parameters(), *sequence.parameters()])


@pytest.mark.parametrize(
    "kernel", [nn.Conv2d(2, 3, 3, padding="same"), nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect")]
)
def test_unsupported_convolutions_take_exact_gradients(kernel):
    engine = GramianEngine(kernel)
    assert not engine._layers  # no hook: their parameters go through the fallback
    z = kernel(torch.randn(2, 2, 5, 5)).flatten(1)
    losses = head_losses(z, [nn.Linear(z.shape[1], 1) for _ in range(2)], 1.0)
    assert_gram(engine.gram(losses), losses, list(kernel.parameters()))


def test_a_layer_called_twice_gets_its_cross_terms():
    torch.manual_seed(2)
    layer = nn.Linear(5, 5)
    engine = GramianEngine(layer)
    z = layer(layer(torch.randn(4, 5)).tanh())
    losses = head_losses(z, [nn.Linear(5, 1) for _ in range(3)], 1.0)
    assert_gram(engine.gram(losses), losses, list(layer.parameters()))


def test_tied_weights_and_functional_use_fall_back_to_exact_gradients():
    torch.manual_seed(3)
    first, second, unused_call = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
    second.weight = first.weight  # shared: neither layer can be formed from its own activations
    engine = GramianEngine(nn.ModuleList([first, second, unused_call]))
    x = torch.randn(8, 4)
    z = second(first(x).relu()) + x @ unused_call.weight.T  # unused_call's weight used without a call
    losses = head_losses(z, [nn.Linear(4, 1) for _ in range(2)], 1.0)
    assert_gram(engine.gram(losses), losses, list(engine.parameters))
    assert len(engine.parameters) == 5  # first.weight once, two biases, unused_call's two


def test_final_gradient_is_jacobian_transpose_times_weights():
    torch.manual_seed(4)
    trunk, x = mlp(32, 16, norm=True)
    heads = [nn.Linear(16, 1) for _ in range(3)]
    engine = GramianEngine(trunk)
    losses = head_losses(trunk(x), heads, 1.0)
    gram = engine.gram(losses)
    weights = min_norm_weights(gram)[0].float()
    expected = weights @ jacobian(losses, list(trunk.parameters())).float()
    own = [torch.autograd.grad(loss, list(head.parameters()), retain_graph=True) for head, loss in zip(heads, losses)]
    losses.backward(weights)
    got = torch.cat([p.grad.reshape(-1) for p in trunk.parameters()])
    # One float32 backward pass against a float32 product of the same gradients: rounding only.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())
    for head, grads, w in zip(heads, own, weights):  # heads: w_i times their own gradient
        for p, g in zip(head.parameters(), grads):
            torch.testing.assert_close(p.grad, w * g)


def test_calls_that_do_not_reach_the_losses_add_nothing_and_are_cleared():
    torch.manual_seed(5)
    trunk, x = mlp(8, 8)
    engine = GramianEngine(trunk)
    trunk(x)  # a forward whose output is dropped
    with torch.no_grad():
        trunk(x)  # not recorded
    losses = head_losses(trunk(x), [nn.Linear(8, 1) for _ in range(2)], 1.0)
    assert len(engine._layers[trunk[0]]) == 2
    assert_gram(engine.gram(losses), losses, list(trunk.parameters()))
    assert all(not calls for calls in engine._layers.values())
    trunk(x)
    engine.clear()
    assert all(not calls for calls in engine._layers.values())


def test_after_remove_no_call_is_recorded_and_the_gram_stays_exact():
    torch.manual_seed(6)
    trunk, x = mlp(8, 8)
    engine = GramianEngine(trunk)
    engine.remove()
    losses = head_losses(trunk(x), [nn.Linear(8, 1) for _ in range(2)], 1.0)
    assert all(not calls for calls in engine._layers.values())
    assert_gram(engine.gram(losses), losses, list(trunk.parameters()))


@given(
    rows=st.integers(1, 24),
    widths=st.lists(st.integers(1, 24), min_size=2, max_size=4),
    k=st.integers(1, 5),
    exponent=st.integers(-30, 30),
    seed=st.integers(0, 2**16),
)
def test_property_gram_matches_autograd(rows, widths, k, exponent, seed):
    torch.manual_seed(seed)
    layers = [m for d_in, d_out in zip(widths, widths[1:]) for m in (nn.Linear(d_in, d_out), nn.Tanh())]
    trunk = nn.Sequential(*layers)
    engine = GramianEngine(trunk)
    heads = [nn.Linear(widths[-1], 1) for _ in range(k)]
    losses = head_losses(trunk(torch.randn(rows, widths[0])), heads, 10.0**exponent)
    assert_gram(engine.gram(losses), losses, list(trunk.parameters()))


def test_matches_torchjd_autogram():
    autogram = pytest.importorskip("torchjd.autogram")
    torch.manual_seed(7)
    trunk, x = mlp(16, 12, norm=True)
    heads = [nn.Linear(12, 1) for _ in range(3)]
    ours = GramianEngine(trunk)
    losses = head_losses(trunk(x), heads, 1.0)
    gram = ours.gram(losses)
    ours.remove()
    theirs = autogram.Engine(trunk, batch_dim=None)
    losses = head_losses(trunk(x), heads, 1.0)
    # torchjd forms each layer's k x P_l block in float32 and sums in float32: its rounding, 1e-5.
    torch.testing.assert_close(gram, theirs.compute_gramian(losses).double(), rtol=1e-5, atol=1e-5 * gram.max().item())


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="modules must hold at least one"):
        GramianEngine()
    with pytest.raises(TypeError, match=r"modules\[1\] must be an nn.Module, got Tensor"):
        GramianEngine(nn.Linear(2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="no parameter that requires grad"):
        GramianEngine(nn.Linear(2, 2).requires_grad_(False))
    layer = nn.Linear(3, 3)
    engine = GramianEngine(layer)
    out = layer(torch.randn(2, 3))
    with pytest.raises(TypeError, match="losses must be a floating-point tensor"):
        engine.gram([out.sum()])
    with pytest.raises(ValueError, match=r"1-D tensor that requires grad.*shape \(2, 3\)"):
        engine.gram(out)
    with pytest.raises(ValueError, match="requires_grad=False"):
        engine.gram(torch.zeros(2))
    x = torch.randn(2, 3)
    layer(x)
    x.add_(1)
    with pytest.raises(RuntimeError, match="modified in place"):
        engine.gram(layer(torch.randn(2, 3)).sum(1))
    assert all(not calls for calls in engine._layers.values())  # cleared after the error too
