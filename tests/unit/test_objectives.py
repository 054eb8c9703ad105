import io
import math

import pytest
import torch
from torch import nn

from torch_moo import objectives


def test_l1_of_a_module_covers_weights_and_kernels_not_biases_or_norms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    expected = model[0].weight.abs().sum() + model[3].weight.abs().sum()
    torch.testing.assert_close(objectives.l1(model, reduction="sum"), expected)
    count = model[0].weight.numel() + model[3].weight.numel()
    torch.testing.assert_close(objectives.l1(model), expected / count)  # the default: the mean


def test_l1_of_tensors_takes_all_of_them_and_is_differentiable():
    w = torch.tensor([[1.0, -2.0], [0.0, 3.0]], requires_grad=True)
    b = torch.tensor([-0.5], requires_grad=True)
    loss = objectives.l1([w, b], reduction="sum")
    assert loss.item() == 6.5
    loss.backward()
    assert torch.equal(w.grad, torch.sign(w.detach()))
    assert torch.equal(b.grad, torch.tensor([-1.0]))


def test_a_single_tensor_is_one_parameter_not_an_iterable_of_rows():
    w = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    assert objectives.l1(w, reduction="mean").item() == objectives.l1([w], reduction="mean").item()
    assert objectives.l1(w, reduction="mean").item() == pytest.approx(8.0 / 6)
    assert objectives.group_l2(w).item() == 6.0  # rows of the one matrix, not entries of its rows
    assert objectives.ReweightedL1(w, eps=1.0)().item() == objectives.ReweightedL1([w], eps=1.0)().item()


def test_module_parameters_generator_is_accepted():
    model = nn.Linear(3, 2)
    expected = model.weight.abs().sum() + model.bias.abs().sum()
    torch.testing.assert_close(objectives.l1(model.parameters(), reduction="sum"), expected)


@pytest.mark.parametrize("function", [objectives.l1, objectives.group_l2, objectives.growl, objectives.ReweightedL1])
def test_selection_errors_are_shared(function):
    name = function.__name__
    with pytest.raises(ValueError, match=f"^{name} got no parameters to penalise$"):
        function(nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match=f"^{name} got no parameters to penalise$"):
        function([])
    with pytest.raises(TypeError, match=rf"^{name}: params_or_module\[1\] must be a tensor, got float$"):
        function([torch.ones(2, 2), 0.5])
    with pytest.raises(TypeError, match=f"^{name} takes a module, a tensor or an iterable of tensors, got int$"):
        function(3)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda: objectives.l1([torch.ones(2)], reduction="max"),
            ValueError,
            r"reduction must be one of 'sum', 'mean'; got 'max'",
        ),
        (
            lambda: objectives.group_l2([torch.ones(2, 2)], reduction="none"),
            ValueError,
            r"reduction must be one of 'sum', 'mean'; got 'none'",
        ),
        (
            lambda: objectives.group_l2([torch.ones(2, 2)], structure="channel"),
            ValueError,
            r"structure must be one of 'row', 'column'; got 'channel'",
        ),
        (
            lambda: objectives.growl([torch.ones(2, 2)], structure="rows"),
            ValueError,
            r"structure must be one of 'row', 'column'; got 'rows'",
        ),
        (
            lambda: objectives.group_l2([torch.ones(2, 2), torch.ones(3)], structure="column"),
            ValueError,
            r"group_l2 with structure='column' needs tensors with at least 2 dimension\(s\), "
            r"got params_or_module\[1\] of shape \(3,\)",
        ),
        (
            lambda: objectives.growl([torch.tensor(1.0)], structure="row"),
            ValueError,
            r"growl with structure='row' needs tensors with at least 1 dimension\(s\), "
            r"got params_or_module\[0\] of shape \(\)",
        ),
    ],
)
def test_argument_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ------------------------------------------------------------------------------ group_l2

W = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 2.0]])  # rows: 5, 0, sqrt 5; columns: sqrt 10, 4, 2


@pytest.mark.parametrize(
    "structure, expected, groups",
    [
        ("row", 5.0 + math.sqrt(5.0), 3),
        ("column", math.sqrt(10.0) + 4.0 + 2.0, 3),
    ],
)
def test_group_l2_values(structure, expected, groups):
    assert objectives.group_l2(W, structure=structure).item() == pytest.approx(expected, rel=1e-6)
    assert objectives.group_l2(W, structure=structure, reduction="mean").item() == pytest.approx(
        expected / groups, rel=1e-6
    )


def test_group_l2_mean_divides_by_the_number_of_groups_over_all_layers():
    layers = [torch.ones(2, 3), torch.ones(4, 1)]  # row groups: 2 of norm sqrt 3, 4 of norm 1
    assert objectives.group_l2(layers, reduction="mean").item() == pytest.approx((2 * math.sqrt(3) + 4) / 6)
    # column groups: 3 of norm sqrt 2, 1 of norm 2
    assert objectives.group_l2(layers, structure="column", reduction="mean").item() == pytest.approx(
        (3 * math.sqrt(2) + 2) / 4
    )


def test_group_l2_of_a_conv_kernel_groups_output_and_input_channels():
    torch.manual_seed(0)
    kernel = torch.randn(4, 3, 2, 2)  # (out, in, kh, kw)
    rows = sum(kernel[o].pow(2).sum().sqrt() for o in range(4))
    columns = sum(kernel[:, i].pow(2).sum().sqrt() for i in range(3))
    torch.testing.assert_close(objectives.group_l2(kernel, structure="row"), rows)
    torch.testing.assert_close(objectives.group_l2(kernel, structure="column"), columns)


def test_group_l2_of_a_module_covers_weights_and_kernels_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    for structure in ("row", "column"):
        expected = objectives.group_l2([model[0].weight, model[3].weight], structure=structure)
        torch.testing.assert_close(objectives.group_l2(model, structure=structure), expected)


def test_group_l2_rows_of_a_vector_are_its_entries():
    b = torch.tensor([-1.0, 0.0, 2.5])
    assert objectives.group_l2(b).item() == 3.5


@pytest.mark.parametrize("structure", ["row", "column"])
def test_group_l2_gradient_is_finite_and_zero_at_a_zero_group(structure):
    w = W.clone().requires_grad_(True)
    objectives.group_l2(w, structure=structure).backward()
    assert torch.isfinite(w.grad).all()
    expected = W / (W.norm(dim=1, keepdim=True) if structure == "row" else W.norm(dim=0, keepdim=True))
    expected = torch.nan_to_num(expected)  # 0/0 at the zero row: the subgradient is 0
    torch.testing.assert_close(w.grad, expected)
    if structure == "row":
        assert torch.equal(w.grad[1], torch.zeros(3))


def test_group_l2_gradient_of_an_all_zero_module_is_zero():
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.zero_()
    for structure in ("row", "column"):
        model.zero_grad()
        objectives.group_l2(model, structure=structure).backward()
        assert torch.equal(model.weight.grad, torch.zeros(3, 4))


# ------------------------------------------------------------------------------ growl


def test_growl_values_with_explicit_weights_sort_the_group_norms():
    # column norms: sqrt 10 ~ 3.16, 4, 2 -> sorted 4, sqrt 10, 2
    got = objectives.growl(W, weights=[3.0, 2.0, 1.0])
    assert got.item() == pytest.approx(3 * 4 + 2 * math.sqrt(10) + 1 * 2, rel=1e-6)
    # rows: 5, 0, sqrt 5 -> 5, sqrt 5, 0; extra weights are unused
    got = objectives.growl(W, structure="row", weights=torch.tensor([3.0, 2.0, 1.0, 1.0, 0.0]))
    assert got.item() == pytest.approx(3 * 5 + 2 * math.sqrt(5), rel=1e-6)


def test_growl_pair_is_beta1_max_plus_beta2_sum_and_defaults_to_point8_point2():
    expected = 1.5 * 4 + 0.5 * (math.sqrt(10) + 2)  # lambda = (1.5, 0.5, 0.5)
    assert objectives.growl(W, weights=(1.0, 0.5)).item() == pytest.approx(expected, rel=1e-6)
    assert objectives.growl(W, weights=[1.5, 0.5, 0.5]).item() == pytest.approx(expected, rel=1e-6)
    default = 0.8 * 4 + 0.2 * (math.sqrt(10) + 4 + 2)
    assert objectives.growl(W).item() == pytest.approx(default, rel=1e-6)
    assert objectives.growl(W, weights=(0.8, 0.2)).item() == pytest.approx(default, rel=1e-6)


def test_growl_is_per_layer_and_each_layer_uses_the_first_weights():
    a = torch.tensor([[1.0, 2.0]])  # column norms 1, 2
    b = torch.tensor([[0.0], [3.0]])  # one column, norm 3
    got = objectives.growl([a, b], weights=[2.0, 1.0])
    assert got.item() == pytest.approx((2 * 2 + 1 * 1) + 2 * 3)
    got = objectives.growl([a, b], weights=(1.0, 0.5))
    assert got.item() == pytest.approx((1 * 2 + 0.5 * 3) + (1 * 3 + 0.5 * 3))


def test_growl_of_a_module_covers_weights_and_kernels_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    expected = objectives.growl([model[0].weight, model[3].weight], weights=[1.0] * 8)
    torch.testing.assert_close(objectives.growl(model, weights=[1.0] * 8), expected)


@pytest.mark.parametrize("weights, lambda1", [(None, 1.0), ((1.0, 0.5), 1.5), ([2.0, 1.0, 0.5], 2.0)])
def test_growl_gradient_is_finite_and_zero_at_zero_groups(weights, lambda1):
    w = torch.tensor([[0.0, 3.0, 0.0], [0.0, 4.0, 0.0]], requires_grad=True)  # columns 0 and 2 are zero
    objectives.growl(w, weights=weights).backward()
    assert torch.isfinite(w.grad).all()
    assert torch.equal(w.grad[:, [0, 2]], torch.zeros(2, 2))
    # The largest group takes lambda_1: gradient lambda_1 * w_g / ||w_g||.
    torch.testing.assert_close(w.grad[:, 1], lambda1 * torch.tensor([0.6, 0.8]))
    z = torch.zeros(3, 2, requires_grad=True)
    objectives.growl(z, weights=weights).backward()
    assert torch.equal(z.grad, torch.zeros(3, 2))


@pytest.mark.parametrize(
    "weights, error, message",
    [
        (
            [1.0, 2.0],
            ValueError,
            r"weights must be nonincreasing, got \[1.0, 2.0\] \(weights\[1\]=2.0 > weights\[0\]=1.0\)",
        ),
        ([1.0, -0.5], ValueError, r"weights must be non-negative, got \[1.0, -0.5\]"),
        ([1.0, float("nan")], ValueError, r"weights must be finite, got \[1.0, nan\]"),
        (torch.tensor([float("inf"), 1.0]), ValueError, r"weights must be finite, got \[inf, 1.0\]"),
        ([], ValueError, r"weights must be a non-empty 1-D sequence, got shape \(0,\)"),
        ([[1.0], [0.5]], ValueError, r"weights must be a non-empty 1-D sequence, got shape \(2, 1\)"),
        (0.5, ValueError, r"weights must be a non-empty 1-D sequence, got shape \(\)"),
        ("ab", TypeError, r"weights must be a pair \(beta1, beta2\), a 1-D sequence of numbers or a tensor, got 'ab'"),
        ((-0.1, 0.2), ValueError, r"weights\[0\] \(beta1\) must be >= 0.0, got -0.1"),
        ((0.8, float("inf")), ValueError, r"weights\[1\] \(beta2\) must be finite, got inf"),
        ((0.8, "0.2"), TypeError, r"weights\[1\] \(beta2\) must be a real number, got str '0.2'"),
        (
            [1.0, 0.5],
            ValueError,
            r"weights has 2 entries, but params_or_module\[0\] has 3 column groups: "
            r"give at least one weight per group",
        ),
    ],
)
def test_growl_weight_errors(weights, error, message):
    with pytest.raises(error, match=message):
        objectives.growl(W, weights=weights)


# ------------------------------------------------------------------------------ ReweightedL1


def test_reweighted_l1_value_gradient_and_refresh():
    w = torch.tensor([[2.0, 0.0], [-0.5, 1.0]], requires_grad=True)
    penalty = objectives.ReweightedL1([w], eps=0.5)
    value = penalty()
    assert value.item() == pytest.approx(2 / 2.5 + 0 + 0.5 / 1.0 + 1 / 1.5)
    value.backward()
    torch.testing.assert_close(w.grad, torch.sign(w.detach()) / (w.detach().abs() + 0.5))
    assert all(not r.requires_grad for r in penalty.references)

    with torch.no_grad():
        w.fill_(1.0)  # the reference is a snapshot, not a view of the weights
    assert penalty().item() == pytest.approx(1 / 2.5 + 1 / 0.5 + 1 / 1.0 + 1 / 1.5)
    penalty.refresh()
    assert penalty().item() == pytest.approx(4 / 1.5)
    assert objectives.ReweightedL1([w], eps=0.5, reduction="mean")().item() == pytest.approx(1 / 1.5)


def test_reweighted_l1_of_a_module_covers_weights_and_kernels_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    penalty = objectives.ReweightedL1(model)
    assert [p is q for p, q in zip(penalty.params, [model[0].weight, model[3].weight])] == [True, True]
    assert penalty.references[0].shape == (2, 1, 3, 3)
    assert "2 parameters" in repr(penalty)


def test_reweighted_l1_state_dict_round_trip():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    penalty = objectives.ReweightedL1(model, eps=1e-3)
    saved = penalty.state_dict()
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    before = penalty().item()

    with torch.no_grad():
        model.weight.mul_(2.0)
    penalty.refresh()
    assert penalty().item() != pytest.approx(before * 2)  # new references
    buffer.seek(0)
    penalty.load_state_dict(torch.load(buffer))
    assert penalty().item() == pytest.approx(before * 2)  # the old references, weights doubled

    other = objectives.ReweightedL1(model, eps=1e-3)
    other.load_state_dict(saved)
    assert other().item() == pytest.approx(before * 2)
    assert other.references[0] is not saved["references"][0]  # a copy, not the caller's tensor


def test_reweighted_l1_load_moves_references_to_the_parameter_dtype():
    w = torch.ones(2, 2, dtype=torch.float64)
    penalty = objectives.ReweightedL1(w)
    penalty.load_state_dict({"references": [torch.full((2, 2), 0.5, dtype=torch.float32)]})
    assert penalty.references[0].dtype == torch.float64


@pytest.mark.parametrize(
    "state, message",
    [
        ({}, r"state_dict has no 'references' entry: it was not saved by ReweightedL1.state_dict\(\)"),
        ({"references": torch.ones(2, 2)}, r"state_dict\['references'\] must be a list of tensors, got Tensor"),
        (
            {"references": [torch.ones(2, 3)]},
            r"state_dict holds 1 references, but this ReweightedL1 penalises 2 parameters",
        ),
        (
            {"references": [torch.ones(2, 3), torch.ones(3, 2)]},
            r"state_dict reference 1 has shape \(3, 2\), expected \(2, 2\) \(the shape of parameter 1\)",
        ),
        (
            {"references": [torch.ones(2, 3), [[1.0, 1.0], [1.0, 1.0]]]},
            r"state_dict reference 1 must be a tensor, got list",
        ),
        (
            {"references": [torch.ones(2, 3), torch.tensor([[1.0, float("nan")], [1.0, 1.0]])]},
            r"state_dict reference 1 must be finite",
        ),
    ],
)
def test_reweighted_l1_load_errors_change_nothing(state, message):
    params = [torch.randn(2, 3), torch.randn(2, 2)]
    penalty = objectives.ReweightedL1(params)
    before = [r.clone() for r in penalty.references]
    with pytest.raises(ValueError, match=message):
        penalty.load_state_dict(state)
    assert all(torch.equal(r, b) for r, b in zip(penalty.references, before))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"eps": 0.0}, ValueError, r"eps must be > 0.0, got 0.0"),
        ({"eps": float("nan")}, ValueError, r"eps must be finite, got nan"),
        ({"eps": "1e-6"}, TypeError, r"eps must be a real number, got str '1e-6'"),
        ({"reduction": "max"}, ValueError, r"reduction must be one of 'sum', 'mean'; got 'max'"),
    ],
)
def test_reweighted_l1_argument_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        objectives.ReweightedL1([torch.ones(2, 2)], **kwargs)
