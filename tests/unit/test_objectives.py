import pytest
import torch
from torch import nn

from torch_moo import objectives


def test_l1_of_a_module_covers_weights_and_kernels_not_biases_or_norms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    expected = model[0].weight.abs().sum() + model[3].weight.abs().sum()
    torch.testing.assert_close(objectives.l1(model), expected)
    count = model[0].weight.numel() + model[3].weight.numel()
    torch.testing.assert_close(objectives.l1(model, reduction="mean"), expected / count)


def test_l1_of_tensors_takes_all_of_them_and_is_differentiable():
    w = torch.tensor([[1.0, -2.0], [0.0, 3.0]], requires_grad=True)
    b = torch.tensor([-0.5], requires_grad=True)
    loss = objectives.l1([w, b])
    assert loss.item() == 6.5
    loss.backward()
    assert torch.equal(w.grad, torch.sign(w.detach()))
    assert torch.equal(b.grad, torch.tensor([-1.0]))


@pytest.mark.parametrize("args, kwargs, message", [
    ((nn.BatchNorm1d(3),), {}, "l1 got no parameters to penalise"),
    (([torch.ones(2)],), {"reduction": "max"}, "reduction must be 'sum' or 'mean', got 'max'"),
])
def test_l1_errors(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        objectives.l1(*args, **kwargs)
