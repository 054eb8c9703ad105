"""PyTorch Lightning: a sparse two-task CNN trained with a torch_moo optimizer, manual optimization.

The :class:`~torch_moo.datasets.TwoHeadCNN` on :class:`torch_moo.datasets.TwoDigits` (no download),
inside a :class:`lightning.pytorch.LightningModule`. ``configure_optimizers`` returns a
:class:`torch_moo.ChebyshevALM` (preference between the two tasks' cross-entropies) and a
cosine learning-rate schedule, and attaches a :class:`torch_moo.SparsityController` (80% of
the weights pruned, dynamic sparse training with exploration regrowth). Lightning's automatic
optimization calls ``loss.backward()`` on one scalar, so the module uses manual optimization:

.. code-block:: python

    opt = self.optimizers()  # a LightningOptimizer around the ChebyshevALM
    opt.zero_grad()
    opt.backward(losses, scaler=...)  # torch_moo's backward, through Lightning's wrapper
    opt.step()  # Lightning's step: precision plugin, hooks, then ours

``self.manual_backward`` is not used: it calls ``loss.backward()`` and would scale the loss vector under ``16-mixed``.
Under ``16-mixed`` the precision plugin's :class:`torch.amp.GradScaler` is passed to
``backward`` (:func:`grad_scaler`); Lightning unscales and steps with it. The controller is
not something Lightning knows about: its masks travel in the checkpoint through
``on_save_checkpoint`` / ``on_load_checkpoint`` (see :meth:`MultiTaskModule.configure_optimizers`
for the restore order).

    python examples/lightning_mtl.py            # 4 epochs on 20,000 images (not timed here)
    python examples/lightning_mtl.py --smoke    # a few seconds, for the tests
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import lightning as L
import torch
from torch.nn.functional import cross_entropy

import torch_moo as tm
from torch_moo.datasets import TwoDigits, TwoHeadCNN

HYPERPARAMETERS = {
    "lr": 5e-3,
    "preference": (0.5, 0.5),
    "penalty": 1.0,
    "outer_every": 20,
    "sparsity": 0.8,
    "update_every": 10,
    "total_steps": 100,
    "seed": 0,
}


def build(model: torch.nn.Module, hp: dict[str, Any], sparsity_state: dict | None = None):
    """The optimizer, its cosine schedule (per step) and the sparsity controller for ``model``.

    ``hp`` overrides :data:`HYPERPARAMETERS`; ``sparsity_state`` is a saved controller state to resume from."""
    hp = {**HYPERPARAMETERS, **hp}
    opt = tm.ChebyshevALM(
        model.parameters(),
        num_objectives=2,
        preference=list(hp["preference"]),
        penalty=hp["penalty"],
        outer_every=hp["outer_every"],
        lr=hp["lr"],
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=hp["total_steps"])
    sparse = tm.SparsityController(
        opt,
        model=model,
        sparsity=hp["sparsity"],
        regrow="exploration",
        update_every=hp["update_every"],
        stop_after=hp["total_steps"],
        generator=torch.Generator().manual_seed(hp["seed"]),
        state_dict=sparsity_state,
    )
    return opt, schedule, sparse


def task_losses(model: torch.nn.Module, batch) -> torch.Tensor:
    """The loss vector: cross-entropy of the left digit, then of the right one."""
    images, left, right = batch
    left_logits, right_logits = model(images)
    return torch.stack([cross_entropy(left_logits, left), cross_entropy(right_logits, right)])


def loader(data, *, batch_size: int, seed: int, shuffle: bool = True) -> torch.utils.data.DataLoader:
    """Mini-batches of ``(images, left, right)`` in an order fixed by ``seed``."""
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*data),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
    )


def grad_scaler(trainer: L.Trainer) -> torch.amp.GradScaler | None:
    """The precision plugin's GradScaler (``precision="16-mixed"`` on GPU), else ``None``."""
    return getattr(trainer.precision_plugin, "scaler", None)


class MultiTaskModule(L.LightningModule):
    """TwoHeadCNN trained with ChebyshevALM and a SparsityController, by manual optimization."""

    def __init__(self, **hp: Any) -> None:
        super().__init__()
        self.save_hyperparameters({**HYPERPARAMETERS, **hp})
        self.automatic_optimization = False  # torch_moo needs the loss vector, not loss.backward()
        self.net = TwoHeadCNN()
        self.sparse: tm.SparsityController | None = None
        self._saved_sparsity: dict | None = None

    def forward(self, images: torch.Tensor):
        return self.net(images)

    def configure_optimizers(self):
        # On resume (fit(ckpt_path=...)) Lightning has already loaded the weights and called
        # on_load_checkpoint, and loads the optimizer and scheduler states after this method.
        # The controller then starts from the saved masks, not a new topology that would prune
        # the restored weights.
        opt, schedule, self.sparse = build(self.net, self.hparams, self._saved_sparsity)
        self._saved_sparsity = None
        return [opt], [schedule]  # manual optimization: training_step steps the schedule

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()  # LightningOptimizer around the ChebyshevALM
        opt.zero_grad()
        losses = task_losses(self.net, batch)
        weights = opt.backward(losses, scaler=grad_scaler(self.trainer))
        opt.step()  # the SparsityController's hooks run inside: masked weights are zero after it
        self.lr_schedulers().step()  # manual optimization: schedulers are stepped by the module
        self.log_dict({"ce_left": losses[0], "ce_right": losses[1], "weight_left": weights[0]}, prog_bar=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["sparsity_controller"] = self.sparse.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._saved_sparsity = checkpoint["sparsity_controller"]


@torch.no_grad()
def accuracy(model: TwoHeadCNN, data) -> tuple[float, float]:
    images, left, right = data
    left_logits, right_logits = model.predict(images)
    return (left_logits.argmax(1) == left).float().mean().item(), (
        right_logits.argmax(1) == right
    ).float().mean().item()


def quiet() -> None:
    """Silence Lightning's advice that does not apply to this small CPU example."""
    for message in (".*does not have many workers.*", ".*LeafSpec.*", ".*litlogger.*"):
        warnings.filterwarnings("ignore", message=message)
    import logging

    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=HYPERPARAMETERS["lr"])
    parser.add_argument("--sparsity", type=float, default=HYPERPARAMETERS["sparsity"])
    parser.add_argument(
        "--precision", default="32-true", help="Lightning's precision: 32-true, bf16-mixed, 16-mixed (GPU)"
    )
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny data and one epoch, for the tests")
    args = parser.parse_args()
    if args.smoke:
        args.epochs = 1
    quiet()
    begin = time.perf_counter()
    train_size, test_size = (512, 256) if args.smoke else (None, None)  # None: 20,000 and 4,000
    train_data = TwoDigits(train=True, size=train_size, seed=args.seed).tensors()
    test_data = TwoDigits(train=False, size=test_size, seed=args.seed).tensors()
    train_loader = loader(train_data, batch_size=args.batch_size, seed=args.seed)

    torch.manual_seed(args.seed)
    module = MultiTaskModule(
        lr=args.lr, sparsity=args.sparsity, seed=args.seed, total_steps=args.epochs * len(train_loader)
    )
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=1,
        precision=args.precision,
        deterministic=True,
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=not args.smoke,
        enable_model_summary=False,
    )
    trainer.fit(module, train_loader)

    moo = module.optimizers().optimizer
    left, right = accuracy(module.net.cpu(), test_data)
    print(
        f"TwoDigits: {len(train_data[1])} training and {len(test_data[1])} held-out images, {args.epochs} epochs, "
        f"{trainer.global_step} steps, precision {args.precision}"
    )
    print(
        f"ChebyshevALM multipliers {[round(v, 4) for v in moo.multipliers.tolist()]}, "
        f"final lr {moo.param_groups[0]['lr']:.2e}"
    )
    print(f"held-out accuracy: left {left:.3f}  right {right:.3f}   sparsity {module.sparse.sparsity():.1%}")
    print(f"total {time.perf_counter() - begin:.1f} s")


if __name__ == "__main__":
    main()
