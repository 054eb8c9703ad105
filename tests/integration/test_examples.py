"""Every example runs, test-sized, and prints what it promises."""

import functools
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each example runs in a Python process of its own

EXAMPLES = {path.stem: path for path in sorted((Path(__file__).parents[2] / "examples").glob("[!_]*.py"))}


@functools.cache
def smoke_run(name: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES[name]), "--smoke"], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs_in_smoke_mode(name):
    result = smoke_run(name)
    assert result.returncode == 0, result.stderr


def test_quickstart_prints_the_comparison_table():
    rows = [
        line.split()
        for line in smoke_run("quickstart").stdout.splitlines()
        if line.startswith(("dense Adam", "ChebyshevALM"))
    ]
    assert [row[0] for row in rows] == ["dense", "ChebyshevALM"]
    for row in rows:
        digit, parity, sparsity = float(row[-3]), float(row[-2]), float(row[-1].rstrip("%"))
        assert 0 <= digit <= 1 and 0 <= parity <= 1 and 0 <= sparsity <= 100


def test_pareto_exploration_stays_on_the_known_front_and_trades_the_tasks():
    lines = smoke_run("pareto_exploration").stdout.splitlines()
    distances = [float(line.rsplit("=", 1)[1]) for line in lines if "|f2 - (1 - f1^2)|" in line]
    assert len(distances) == 4 and max(distances) < 1e-6  # the cylinder problem's true front
    explored = [line for line in lines if line.strip().startswith("direction e")]
    assert len(explored) == 4 and all("HVPs" in line for line in explored)
    assert any(line.strip().endswith("are non-dominated") for line in lines)
