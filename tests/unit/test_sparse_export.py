"""Sparse export: SparseLinear and to_sparse match the dense model, replace only what they should."""

import copy
import io
import re

import pytest
import torch
from torch import nn

from torch_moo.sparsity.export import SparseLinear, to_sparse

LAYOUTS = [torch.sparse_csr, torch.sparse_coo]
# The sparse kernels skip the zeros and sum the remaining products in another order than the
# dense GEMM, so results differ by float32 rounding: a few ulps of sums of <= 64 terms of
# size ~1, i.e. ~1e-6. 1e-5 leaves room for that and is far below any real error (>= 1e-2).
TOL = dict(rtol=1e-5, atol=1e-5)


def sparsify_(linear: nn.Linear, sparsity: float, seed: int = 0) -> nn.Linear:
    """Zero exactly round(sparsity * numel) weights of ``linear``, chosen at random."""
    weight = linear.weight
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(weight.numel(), generator=generator)
    with torch.no_grad():
        weight.view(-1)[order[: round(sparsity * weight.numel())]] = 0.0
    return linear


def make_linear(in_features=48, out_features=32, bias=True, sparsity=0.9, seed=0) -> nn.Linear:
    torch.manual_seed(seed)
    return sparsify_(nn.Linear(in_features, out_features, bias=bias), sparsity, seed)


def make_mlp(sparsities=(0.9, 0.9, 0.9), seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 10))
    for layer, sparsity in zip(mlp[::2], sparsities):
        sparsify_(layer, sparsity, seed)
    return mlp


# --- SparseLinear ------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS, ids=["csr", "coo"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("shape", [(7, 48), (3, 5, 48), (48,), (1, 48), (2, 1, 3, 48)], ids=str)
def test_sparse_linear_matches_dense(layout, bias, shape):
    linear = make_linear(bias=bias)
    sparse = SparseLinear.from_dense(linear, layout)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    expected = linear(x)
    out = sparse(x)
    assert out.shape == expected.shape == (*shape[:-1], 32)
    torch.testing.assert_close(out, expected, **TOL)
    with torch.inference_mode():
        torch.testing.assert_close(sparse(x), expected, **TOL)


@pytest.mark.parametrize("layout", LAYOUTS, ids=["csr", "coo"])
def test_sparse_linear_attributes(layout):
    linear = make_linear(sparsity=0.75)
    sparse = SparseLinear.from_dense(linear, layout)
    assert (sparse.in_features, sparse.out_features, sparse.layout) == (48, 32, layout)
    assert sparse.weight.layout == layout and sparse.bias.layout == torch.strided
    assert sparse.density == pytest.approx(0.25)
    assert list(sparse.parameters()) == []  # inference-only: buffers, no parameters
    assert repr(sparse) == (f"SparseLinear(in_features=48, out_features=32, bias=True, layout={layout}, density=0.250)")
    torch.testing.assert_close(sparse.weight.to_dense(), linear.weight.detach(), rtol=0, atol=0)
    assert linear.weight.layout == torch.strided and linear.weight.requires_grad  # from_dense leaves it alone


def test_sparse_linear_all_zero_weight():
    linear = make_linear(sparsity=1.0)
    sparse = SparseLinear.from_dense(linear)
    assert sparse.density == 0.0
    x = torch.randn(4, 48)
    torch.testing.assert_close(sparse(x), linear.bias.detach().expand(4, 32), rtol=0, atol=0)


def test_from_dense_keeps_mode():
    linear = make_linear().eval()
    assert not SparseLinear.from_dense(linear).training
    assert SparseLinear.from_dense(linear.train()).training


@pytest.mark.parametrize("layout", LAYOUTS, ids=["csr", "coo"])
def test_gradient_reaches_input_only(layout):
    """Decision: inputs that require grad work; the gradient w.r.t. the input equals the dense
    layer's, and the sparse weight and bias (buffers) get none."""
    linear = make_linear()
    sparse = SparseLinear.from_dense(linear, layout)
    x = torch.randn(6, 48, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    (sparse(x) ** 2).sum().backward()
    (linear(x_ref) ** 2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, **TOL)
    assert not sparse.weight.requires_grad and sparse.weight.grad is None


@pytest.mark.parametrize("layout", LAYOUTS, ids=["csr", "coo"])
def test_to_dtype_and_deepcopy(layout):
    sparse = SparseLinear.from_dense(make_linear(), layout)
    clone = copy.deepcopy(sparse)  # Tensor.__deepcopy__ alone fails for CSR
    assert clone.weight is not sparse.weight and clone.layout == layout
    torch.testing.assert_close(clone.weight.to_dense(), sparse.weight.to_dense(), rtol=0, atol=0)
    double = clone.double()
    assert double.weight.dtype == double.bias.dtype == torch.float64 and double.layout == layout
    x = torch.randn(3, 48, dtype=torch.float64)
    torch.testing.assert_close(double(x), sparse(x.float()).double(), **TOL)


@pytest.mark.parametrize("layout", LAYOUTS, ids=["csr", "coo"])
def test_state_dict_round_trip(layout):
    """A saved state_dict (sparse weight) loads with weights_only=True into a layer whose
    weight has a different number of non-zeros; torch's plain copy_ would refuse that for CSR."""
    source = SparseLinear.from_dense(make_linear(sparsity=0.9, seed=0), layout)
    target = SparseLinear.from_dense(make_linear(sparsity=0.6, seed=1), layout)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["weight"].layout == layout
    target.load_state_dict(state)
    assert target.layout == layout and target.density == pytest.approx(source.density)
    x = torch.randn(5, 48)
    torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_load_dense_linear_state_dict():
    linear = make_linear(sparsity=0.8, seed=2)
    sparse = SparseLinear.from_dense(make_linear(sparsity=0.9, seed=3))
    sparse.load_state_dict(linear.state_dict())
    assert sparse.layout == torch.sparse_csr and sparse.density == pytest.approx(0.2, abs=1e-3)
    x = torch.randn(5, 48)
    torch.testing.assert_close(sparse(x), linear(x), **TOL)


def test_load_state_dict_size_mismatch_is_reported():
    sparse = SparseLinear.from_dense(make_linear())
    with pytest.raises(RuntimeError, match=r"size mismatch for weight"):
        sparse.load_state_dict(nn.Linear(10, 32).state_dict())


# --- to_sparse -----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS, ids=["csr", "coo"])
@pytest.mark.parametrize("shape", [(16, 64), (2, 8, 64)], ids=["2-D", "3-D"])
def test_mlp_end_to_end(layout, shape):
    mlp = make_mlp()
    exported = to_sparse(mlp, layout=layout)
    assert isinstance(exported, nn.Sequential)
    assert [type(m) for m in exported] == [SparseLinear, nn.ReLU, SparseLinear, nn.ReLU, SparseLinear]
    assert all(m.layout == layout for m in exported[::2])
    x = torch.randn(shape)
    torch.testing.assert_close(exported(x), mlp(x), **TOL)
    with torch.inference_mode():
        torch.testing.assert_close(exported(x), mlp(x), **TOL)


def test_only_sparse_enough_layers_are_replaced():
    mlp = make_mlp(sparsities=(0.9, 0.5, 0.3))
    assert [type(m) for m in to_sparse(mlp)[::2]] == [SparseLinear, nn.Linear, nn.Linear]  # default 0.9
    exported = to_sparse(mlp, min_sparsity=0.5)  # exactly 50% zeros qualifies
    assert [type(m) for m in exported[::2]] == [SparseLinear, SparseLinear, nn.Linear]
    exported = to_sparse(mlp, min_sparsity=0.6)
    assert [type(m) for m in exported[::2]] == [SparseLinear, nn.Linear, nn.Linear]
    assert exported[2] is not mlp[2]  # a copy even where nothing is replaced
    assert [type(m) for m in to_sparse(mlp, min_sparsity=0.0)[::2]] == [SparseLinear] * 3
    assert [type(m) for m in to_sparse(mlp, min_sparsity=1.0)[::2]] == [nn.Linear] * 3
    x = torch.randn(4, 64)
    torch.testing.assert_close(exported(x), mlp(x), **TOL)


def test_original_model_unchanged():
    mlp = make_mlp().eval()
    before = copy.deepcopy(mlp.state_dict())
    modules = list(mlp.modules())
    exported = to_sparse(mlp)
    assert list(mlp.modules()) == modules and [type(m) for m in mlp[::2]] == [nn.Linear] * 3
    for name, tensor in mlp.state_dict().items():
        assert tensor.layout == torch.strided
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0)
    assert all(p.requires_grad for p in mlp.parameters())
    assert exported is not mlp and not exported.training


def test_mode_is_kept():
    assert to_sparse(make_mlp().train()).training
    exported = to_sparse(make_mlp().eval())
    assert not any(m.training for m in exported.modules())


def test_conv_layers_stay_dense():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    with torch.no_grad():
        cnn[0].weight.zero_()  # 100% sparse, but a convolution
    sparsify_(cnn[3], 0.9)
    exported = to_sparse(cnn)
    assert [type(m) for m in exported] == [nn.Conv2d, nn.ReLU, nn.Flatten, SparseLinear]
    assert exported[0].weight.layout == torch.strided
    x = torch.randn(3, 1, 6, 6)
    torch.testing.assert_close(exported(x), cnn(x), **TOL)


def test_bare_linear_and_nested_modules():
    linear = make_linear()
    exported = to_sparse(linear, min_sparsity=0.5)
    assert isinstance(exported, SparseLinear) and isinstance(linear, nn.Linear)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([make_linear(32, 32, seed=s) for s in range(2)])
            self.heads = nn.ModuleDict({"a": make_linear(32, 4, seed=5), "b": make_linear(32, 4, sparsity=0.1)})

        def forward(self, x):
            for block in self.blocks:
                x = torch.relu(block(x))
            return self.heads["a"](x) + self.heads["b"](x)

    net = Net()
    exported = to_sparse(net, min_sparsity=0.5)
    assert [type(m) for m in exported.blocks] == [SparseLinear, SparseLinear]
    assert type(exported.heads["a"]) is SparseLinear and type(exported.heads["b"]) is nn.Linear
    x = torch.randn(5, 32)
    torch.testing.assert_close(exported(x), net(x), **TOL)


def test_shared_layer_stays_shared():
    layer = make_linear(32, 32)
    model = nn.Sequential(layer, nn.ReLU(), layer)
    exported = to_sparse(model)
    assert isinstance(exported[0], SparseLinear) and exported[0] is exported[2]
    x = torch.randn(3, 32)
    torch.testing.assert_close(exported(x), model(x), **TOL)


def test_linear_subclasses_stay_dense():
    """nn.MultiheadAttention reads out_proj.weight itself (an nn.Linear subclass): left alone."""
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 2, batch_first=True)
    sparsify_(attention.out_proj, 0.9)
    exported = to_sparse(attention)
    assert type(exported.out_proj) is type(attention.out_proj)
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(exported(x, x, x)[0], attention(x, x, x)[0], rtol=0, atol=0)


def test_to_sparse_of_exported_model():
    exported = to_sparse(make_mlp())
    again = to_sparse(exported)  # deep-copies the SparseLinear layers
    assert again[0] is not exported[0] and type(again[0]) is SparseLinear
    x = torch.randn(4, 64)
    torch.testing.assert_close(again(x), exported(x), rtol=0, atol=0)


def test_exported_state_dict_round_trip():
    """A whole exported model's state_dict loads into another export of a differently sparse model."""
    source, target = (
        to_sparse(make_mlp(seed=0)),
        to_sparse(make_mlp(sparsities=(0.6, 0.7, 0.8), seed=1), min_sparsity=0.5),
    )
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(4, 64)
    torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


# --- errors ----------------------------------------------------------------------------------

LAYOUT_LIST = "torch.sparse_csr, torch.sparse_coo"
TO_SPARSE_ERRORS = [
    ({"model": "mlp"}, TypeError, r"model must be an nn.Module, got str"),
    ({"layout": torch.strided}, ValueError, rf"layout must be one of {LAYOUT_LIST}; got torch.strided"),
    ({"layout": "csr"}, ValueError, rf"layout must be one of {LAYOUT_LIST}; got 'csr'"),
    ({"layout": torch.sparse_csc}, ValueError, r"layout must be one of .*; got torch.sparse_csc"),
    ({"min_sparsity": 1.5}, ValueError, r"min_sparsity must be <= 1.0 \(a fraction of the weights\), got 1.5"),
    ({"min_sparsity": -0.1}, ValueError, r"min_sparsity must be >= 0.0, got -0.1"),
    ({"min_sparsity": float("nan")}, ValueError, r"min_sparsity must be finite, got nan"),
    ({"min_sparsity": "0.5"}, TypeError, r"min_sparsity must be a real number, got str '0.5'"),
    ({"min_sparsity": True}, TypeError, r"min_sparsity must be a real number, got bool True"),
]


@pytest.mark.parametrize("change, error, message", TO_SPARSE_ERRORS, ids=[str(c[0]) for c in TO_SPARSE_ERRORS])
def test_to_sparse_errors(change, error, message):
    mlp = make_mlp()
    arguments = {"model": mlp, **change}
    with pytest.raises(error, match=message):
        to_sparse(arguments.pop("model"), **arguments)
    assert [type(m) for m in mlp[::2]] == [nn.Linear] * 3


def test_to_sparse_layout_is_keyword_only():
    with pytest.raises(TypeError, match=r"to_sparse\(\) takes 1 positional argument but 2 were given"):
        to_sparse(make_mlp(), torch.sparse_coo)


def test_from_dense_errors():
    with pytest.raises(TypeError, match=r"linear must be an nn.Linear, got Conv2d"):
        SparseLinear.from_dense(nn.Conv2d(1, 1, 3))
    with pytest.raises(ValueError, match=rf"layout must be one of {LAYOUT_LIST}; got torch.strided"):
        SparseLinear.from_dense(make_linear(), torch.strided)


def test_constructor_errors():
    dense = torch.zeros(3, 4)
    message = (
        r"weight must be a 2-D torch.sparse_csr or torch.sparse_coo tensor, "
        r"got torch.strided tensor of shape \(3, 4\)"
    )
    with pytest.raises(TypeError, match=message):
        SparseLinear(dense)
    with pytest.raises(TypeError, match=r"weight must be .*, got list"):
        SparseLinear([[0.0]])
    with pytest.raises(ValueError, match=r"bias must be a dense tensor of shape \(3,\) or None, got shape \(4,\)"):
        SparseLinear(dense.to_sparse_coo(), torch.zeros(4))


@pytest.mark.parametrize("shape", [(5, 47), (48, 5), ()], ids=str)
def test_forward_shape_error(shape):
    sparse = SparseLinear.from_dense(make_linear())
    message = f"input must have in_features=48 entries in its last dimension, got shape {tuple(shape)}"
    with pytest.raises(ValueError, match=re.escape(message)):
        sparse(torch.randn(shape))
