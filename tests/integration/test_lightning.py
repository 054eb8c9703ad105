"""Lightning manual optimization drives a torch_moo optimizer exactly as a plain loop does.

The module under test is examples/lightning_mtl.py's: ChebyshevALM, a cosine schedule stepped
every step and a SparsityController with exploration regrowth, on a small TwoDigits set.
"""

import sys
from pathlib import Path

import lightning as L
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "examples"))  # the example under test is a script there
import lightning_mtl as example

import torch_moo as tm
from tests.helpers import TwoHeads, assert_same_state_dict, flat_parameters, method_state
from tests.helpers import task_losses as two_losses
from torch_moo.datasets import (
    TwoDigits,
    TwoHeadCNN,
)

BATCH = 32
STEPS_PER_EPOCH = 4
# topology updates every 2 steps and outer (multiplier) updates every 3: both change within an epoch
HP = {"lr": 1e-2, "penalty": 5.0, "outer_every": 3, "sparsity": 0.7, "update_every": 2, "total_steps": 16, "seed": 0}
DATA = TwoDigits(train=True, size=BATCH * STEPS_PER_EPOCH, seed=0).tensors()
example.quiet()
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec")  # inside Lightning 2.6 itself


def snapshot(model, opt, sparse) -> dict:
    """Everything a step changes: parameters, masks, the method's state, the learning rate."""
    return {
        "parameters": [p.detach().clone() for p in model.parameters()],
        "masks": [m.clone() for m in sparse.masks.values()],
        "method": method_state(opt),
        "lr": opt.param_groups[0]["lr"],
        "sparse_step": sparse.step_count,
    }


def assert_masked_weights_are_zero(model, sparse) -> None:
    params = dict(model.named_parameters())
    for name, mask in sparse.masks.items():
        assert torch.all(params[name].detach()[~mask] == 0), name


class Recorder(L.Callback):
    """A snapshot after every training step (and one when training starts), masks checked each time."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.batches: list = []
        self.start: dict | None = None

    def on_train_start(self, trainer, module) -> None:
        self.start = snapshot(module.net, trainer.optimizers[0], module.sparse)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.batches.append([part.clone() for part in batch])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        assert_masked_weights_are_zero(module.net, module.sparse)
        self.steps.append(snapshot(module.net, trainer.optimizers[0], module.sparse))


def fit(epochs: int, *, shuffle: bool = True, ckpt_path=None, precision: str = "32-true"):
    torch.manual_seed(0)
    module = example.MultiTaskModule(**HP)
    recorder = Recorder()
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        precision=precision,
        deterministic=True,
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
    )
    trainer.fit(module, example.loader(DATA, batch_size=BATCH, seed=0, shuffle=shuffle), ckpt_path=ckpt_path)
    return trainer, module, recorder


def plain_loop(batches) -> list[dict]:
    """The same steps without Lightning, on the batches Lightning drew.

    (Lightning stops an epoch after ``len(loader)`` batches without exhausting the sampler, so
    a seeded shuffle's second epoch differs from a plain ``for`` loop's; the data order is not
    what this test is about.)
    """
    torch.manual_seed(0)
    model = TwoHeadCNN()
    opt, schedule, sparse = example.build(model, HP)
    steps = []
    for batch in batches:
        opt.zero_grad()
        opt.backward(example.task_losses(model, batch))
        opt.step()
        schedule.step()
        steps.append(snapshot(model, opt, sparse))
    return steps


def test_lightning_equals_the_plain_loop_bit_for_bit():
    trainer, module, recorder = fit(2)
    reference = plain_loop(recorder.batches)
    assert len(recorder.steps) == len(reference) == 2 * STEPS_PER_EPOCH == trainer.global_step
    for ours, theirs in zip(recorder.steps, reference):
        assert_same_state_dict(ours, theirs)
    # not vacuous: the topology, the multipliers and the learning rate all moved
    first, last = recorder.steps[0], recorder.steps[-1]
    assert not all(torch.equal(a, b) for a, b in zip(first["masks"], last["masks"]))
    assert not torch.equal(first["method"]["multipliers"], last["method"]["multipliers"])
    assert abs(module.sparse.sparsity() - HP["sparsity"]) < 0.01
    # the scheduler stepped once per training step
    schedule = trainer.lr_scheduler_configs[0].scheduler
    assert schedule.last_epoch == 2 * STEPS_PER_EPOCH
    assert [s["lr"] for s in recorder.steps] == [s["lr"] for s in reference]
    assert last["lr"] < HP["lr"]


@pytest.mark.slow
def test_checkpoint_restores_optimizer_state_and_masks(tmp_path):
    # data in a fixed order: a resumed run's DataLoader starts a fresh shuffle, an uninterrupted one does not
    _, _, uninterrupted = fit(2, shuffle=False)

    trainer, module, first = fit(1, shuffle=False)
    path = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)
    assert saved["optimizer_states"][0]["torch_moo"]["config"]["method"] == "ChebyshevALM"
    assert not all(torch.equal(a, b) for a, b in zip(first.start["masks"], first.steps[-1]["masks"]))

    _, resumed_module, resumed = fit(2, shuffle=False, ckpt_path=path)
    # what the resumed run starts from: the checkpoint's method state, masks, weights and schedule
    assert_same_state_dict(resumed.start, first.steps[-1])
    for key, value in saved["optimizer_states"][0]["torch_moo"]["state"].items():
        assert (
            torch.equal(resumed.start["method"][key], value)
            if isinstance(value, torch.Tensor)
            else resumed.start["method"][key] == value
        )
    assert all(torch.equal(a, b) for a, b in zip(resumed.start["masks"], saved["sparsity_controller"]["masks"]))
    # and where it ends: the uninterrupted run's second epoch, bit for bit
    assert len(resumed.steps) == STEPS_PER_EPOCH
    for ours, theirs in zip(resumed.steps, uninterrupted.steps[STEPS_PER_EPOCH:]):
        assert_same_state_dict(ours, theirs)
    assert_masked_weights_are_zero(resumed_module.net, resumed_module.sparse)


def test_bf16_mixed_precision_trains_with_exact_zeros():
    trainer, module, recorder = fit(1, precision="bf16-mixed")
    assert trainer.global_step == STEPS_PER_EPOCH  # the Recorder checked the masks after each step
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert recorder.steps[-1]["method"].keys() == recorder.steps[0]["method"].keys()


@pytest.mark.parametrize(
    "cls, options",
    [
        (tm.ChebyshevALM, dict(preference=[0.3, 0.7], outer_every=2)),
        (tm.MinMaxWeighting, dict(update_every=1)),
        (tm.MultiGradientDescent, dict(moments=(0.9, 0.99))),
        (tm.ParetoTangentExplorer, dict(base=torch.optim.Adam)),
    ],
)
def test_methods_called_through_lightnings_wrapper_reach_the_optimizer(cls, options):
    # LightningOptimizer subclasses the optimizer's class and reads its attributes through
    # __getattr__: what backward records must reach the optimizer that steps.
    from lightning.pytorch.core.optimizer import LightningOptimizer

    a, b = TwoHeads(), TwoHeads()
    wrapped, plain = (
        cls(a.parameters(), num_objectives=2, lr=1e-2, **options),
        cls(b.parameters(), num_objectives=2, lr=1e-2, **options),
    )
    wrapper = LightningOptimizer(wrapped)
    for step in range(4):
        wrapper.zero_grad()
        wrapper.backward(two_losses(a, step))
        wrapper.optimizer.step()  # what LightningOptimizer.step calls, without a Trainer's strategy
        plain.zero_grad()
        plain.backward(two_losses(b, step))
        plain.step()
    assert torch.equal(flat_parameters(a), flat_parameters(b))
    assert_same_state_dict(wrapped.state_dict(), plain.state_dict())  # nothing of the method's stayed on the wrapper
