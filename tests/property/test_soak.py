"""A soak test: random sequences of steps, faults, accumulation, checkpoints and scheduler steps,
for every optimizer with a SparsityController, with the invariants checked after every rule."""

import io

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from torch.optim import lr_scheduler

from tests.helpers import OPTIMIZERS, TwoHeads, make, next_step, state_dtype, task_losses
from torch_moo import SparsityController

# (nonfinite, GradScaler): faults skipped by the optimizer, by the scaler, or by the optimizer with a scaler.
MODES = [("skip", False), ("propagate", True), ("skip", True)]
FAULTS = [None, None, None, "nan", "inf"]  # most steps are clean


def build(method, mode, seed=0):
    nonfinite, scaled = mode
    model = TwoHeads(seed)
    opt = make(model, method, nonfinite=nonfinite)
    sparse = SparsityController(
        opt,
        model=model,
        sparsity=0.5,
        distribution="uniform",
        regrow="exploration",
        update_every=3,
        generator=torch.Generator().manual_seed(seed),
    )
    sched = lr_scheduler.StepLR(opt, step_size=2, gamma=0.8)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=10**6) if scaled else None
    return model, opt, sparse, sched, scaler


def machine_for(method):
    class Soak(RuleBasedStateMachine):
        @initialize(mode=st.sampled_from(MODES))
        def setup(self, mode):
            self.mode = mode
            self.model, self.opt, self.sparse, self.sched, self.scaler = build(method, mode)
            self.weights = [self.model.trunk[0].weight, self.model.heads[0].weight, self.model.heads[1].weight]
            self.active = [int(m.sum()) for m in self.sparse.masks.values()]
            self.taken = 0  # base steps that should have happened
            self.scaler_skipped = False  # the scaler did not call opt.step() at the last step
            self.batch = 0

        # ------------------------------------------------------------------ helpers
        def losses(self, scale, fault):
            self.batch += 1
            losses = task_losses(self.model, self.batch) * torch.tensor(scale)
            if fault is not None:
                poison = torch.ones(2)
                poison[self.batch % 2] = float("nan") if fault == "nan" else float("inf")
                losses = losses * poison  # the gradient is non-finite too
            return losses

        def finish(self, faulty):
            """Step through the scaler or directly; count the base step the rules expect."""
            self.scaler_skipped = False
            if self.scaler is None:
                self.opt.step()
            else:
                self.scaler_skipped = faulty and self.mode[0] == "propagate"
                scale = self.scaler.get_scale()
                self.scaler.step(self.opt)
                self.scaler.update()
                assert (self.scaler.get_scale() < scale) == (faulty and self.mode[0] == "propagate")
            assert self.opt.skipped == (faulty and self.mode[0] == "skip")
            self.taken += not faulty

        # -------------------------------------------------------------------- rules
        @rule(scale=st.lists(st.floats(0.1, 10.0), min_size=2, max_size=2), fault=st.sampled_from(FAULTS))
        def step(self, scale, fault):
            self.opt.zero_grad()
            self.opt.backward(self.losses(scale, fault), scaler=self.scaler)
            self.finish(fault is not None)

        @precondition(lambda self: method != "MultiGradientDescent")  # its moments take one backward per step
        @rule(fault=st.sampled_from(FAULTS))
        def accumulate(self, fault):
            self.opt.zero_grad()
            self.opt.backward(self.losses([1.0, 1.0], None), scaler=self.scaler)
            self.opt.backward(self.losses([1.0, 1.0], fault), scaler=self.scaler)
            self.finish(fault is not None)

        @rule()
        def zero_grad(self):
            self.opt.zero_grad()
            self.scaler_skipped = False

        @rule()
        def scheduler_step(self):
            self.sched.step()

        @rule(seed=st.integers(1, 5))
        def save_and_load(self, seed):
            objects = (self.model, self.opt, self.sparse, self.sched, self.scaler)
            names = ("model", "opt", "sparse", "sched", "scaler")
            buffer = io.BytesIO()
            torch.save({n: o.state_dict() for n, o in zip(names, objects) if o is not None}, buffer)
            buffer.seek(0)
            saved = torch.load(buffer, weights_only=True)
            fresh = build(method, self.mode, seed)  # other initial weights, masks and generator
            for name, obj in zip(names, fresh):
                if obj is not None:
                    obj.load_state_dict(saved[name])
            self.model, self.opt, self.sparse, self.sched, self.scaler = fresh
            self.scaler_skipped = False
            self.weights = [self.model.trunk[0].weight, self.model.heads[0].weight, self.model.heads[1].weight]

        # --------------------------------------------------------------- invariants
        @invariant()
        def parameters_finite_and_pruned_weights_zero(self):
            if not hasattr(self, "model"):
                return
            assert all(torch.isfinite(p).all() for p in self.model.parameters())
            masks = list(self.sparse.masks.values())
            assert [int(m.sum()) for m in masks] == self.active  # the configured sparsity, exactly
            for p, mask in zip(self.weights, masks):
                assert torch.all(p[~mask] == 0)
                for value in self.opt.state.get(p, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == p.shape:
                        assert torch.all(value[~mask] == 0)

        @invariant()
        def method_state_sound(self):
            if not hasattr(self, "model"):
                return
            state = self.opt.state_dict()["torch_moo"]["state"]
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    assert value.dtype == state_dtype(key), key
                    assert not torch.isnan(value).any(), key
                    if key != "ideal":  # +inf until a loss is seen, by design
                        assert torch.isfinite(value).all(), key
            if method == "MinMaxWeighting":
                weights = state["task_weights"]
                assert torch.all(weights >= 0) and torch.isclose(weights.sum(), torch.tensor(1.0))
            elif method == "ChebyshevALM":
                assert torch.all(state["multipliers"] >= 0) and state["penalty"] > 0
            elif method == "MultiGradientDescent":  # per-objective moments: per-parameter state
                for entries in self.opt.state.values():
                    assert torch.all(entries["objective_exp_avg_sq"] >= 0)
                    assert int(entries["objective_step"]) == self.taken

        @invariant()
        def step_counters_agree(self):
            if not hasattr(self, "model"):
                return
            steps = {int(s["step"]) for s in self.opt.state.values()}
            assert steps <= {self.taken} and (self.taken == 0 or steps == {self.taken})
            assert self.sparse.step_count == self.taken
            # every rule ends with a step, zero_grad or fresh objects; a step the scaler skipped
            # never reached opt.step(), so its backward stays recorded until the next zero_grad
            no_backward = "found no backward" in str(next_step(self.model, self.opt, self.sparse))
            assert no_backward or self.scaler_skipped

    Soak.__name__ = f"Soak{method}"
    return Soak


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")
@pytest.mark.parametrize("method", sorted(OPTIMIZERS))
def test_soak(method):
    run_state_machine_as_test(
        machine_for(method),
        settings=settings(
            max_examples=20,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
