"""examples/torchrun_ddp.py launched by torchrun on 2 gloo ranks: the ranks end identical and learn."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import free_port

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # two processes, each importing torch

EXAMPLE = Path(__file__).parents[2] / "examples" / "torchrun_ddp.py"


@pytest.mark.parametrize("method", ["chebyshev", "mgda-full"])
def test_two_torchrun_ranks_end_identical_and_the_loss_falls(tmp_path, method):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        str(EXAMPLE),
        "--smoke",
        "--backend",
        "gloo",
        "--method",
        method,
        "--out",
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    for name in ("parameters", "masks", "method state"):
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        assert all(r["identical"][name] for r in ranks), name  # each rank's own all_gather check
    assert ranks[0]["sha256"] == ranks[1]["sha256"]
    assert ranks[0]["loss_after"] < ranks[0]["loss_before"]
    masks = ranks[0]["masks"]
    assert 0.75 < 1 - masks.mean().item() < 0.85  # 80% pruned
    assert result.stdout.count("identical across 2 rank(s)") == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="NCCL needs CUDA GPUs, one per rank")
@pytest.mark.parametrize("method", ["chebyshev", "mgda-full"])
def test_nccl_ranks_on_the_gpus_end_identical_and_the_loss_falls(tmp_path, method):
    # The same code as the gloo test on NCCL: one rank per GPU (a single GPU is a world of one,
    # which still runs every all-reduce through NCCL on CUDA tensors).
    ranks = torch.cuda.device_count()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={ranks}",
        f"--master_port={free_port()}",
        str(EXAMPLE),
        "--smoke",
        "--backend",
        "nccl",
        "--method",
        method,
        "--out",
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    saved = [torch.load(tmp_path / f"rank{r}.pt") for r in range(ranks)]
    for name in ("parameters", "masks", "method state"):
        assert all(torch.equal(saved[0][name], other[name]) for other in saved[1:]), name
    assert saved[0]["loss_after"] < saved[0]["loss_before"]
    assert result.stdout.count(f"identical across {ranks} rank(s)") == ranks
