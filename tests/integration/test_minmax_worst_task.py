"""On tasks of unequal difficulty MinMaxWeighting lowers the worst task's held-out loss."""

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # 1500 steps on two seeds

spec = importlib.util.spec_from_file_location(
    "minmax_example", Path(__file__).parents[2] / "examples" / "minmax_weighting.py"
)
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)


def test_worst_task_loss_is_lower_than_with_equal_weights():
    results = example.compare(steps=1500, seeds=2)
    equal, minmax = results["equal weights"], results["MinMaxWeighting"]
    assert equal[1] > equal[0]  # the hard task is the worst one under equal weights
    # Measured (3 seeds): worst 1.03 -> 0.31 while the easy task goes 0.014 -> 0.049; a factor
    # of 2 leaves room for seed noise.
    assert minmax.max() < 0.5 * equal.max()
    assert minmax[0] < 0.2  # the easy task pays, but stays far below the hard one
