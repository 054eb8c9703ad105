"""What the torchrun examples (torchrun_ddp.py, fsdp_mtl.py) share: joining the process group, checking
that the ranks agree and saving what they hold, and scoring a two-task model."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.functional import cross_entropy


def init_distributed(backend: str) -> tuple[int, int, torch.device]:
    """Join torchrun's process group (or make a world of one); this rank, the world size, the device."""
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "RANK" not in os.environ:  # plain ``python``: a one-process world, so the code path is the same
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend)  # rank, world size and rendezvous from torchrun's environment
    return dist.get_rank(), dist.get_world_size(), device


def identical_across_ranks(tensor: Tensor) -> bool:
    """Whether every rank holds exactly this tensor (all_gather, then compare with rank 0's)."""
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return all(torch.equal(other, gathered[0]) for other in gathered)


@torch.no_grad()
def evaluate(model, data: list[Tensor]) -> tuple[float, float, float]:
    """Mean cross-entropy of both tasks on ``data`` and the two accuracies (``model(x)`` returns the
    features and the two tasks' logits); every rank runs the same forward passes."""
    images, left, right = data
    outputs = [model(chunk)[1:] for chunk in images.split(1024)]
    left_logits, right_logits = torch.cat([o[0] for o in outputs]), torch.cat([o[1] for o in outputs])
    return (
        (cross_entropy(left_logits, left) + cross_entropy(right_logits, right)).item() / 2,
        (left_logits.argmax(1) == left).float().mean().item(),
        (right_logits.argmax(1) == right).float().mean().item(),
    )


def report(checks: dict[str, Tensor], summary: str, out: Path | None, **record: object) -> None:
    """Check that every rank holds the same ``checks`` and print them with their SHA-256; with ``out``,
    save them with ``record`` to ``out/rank<r>.pt``; rank 0 prints ``summary``. Exits if the ranks disagree."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    identical = {name: identical_across_ranks(tensor) for name, tensor in checks.items()}
    digest = hashlib.sha256(b"".join(t.cpu().numpy().tobytes() for t in checks.values())).hexdigest()
    print(
        f"rank {rank}: "
        + ", ".join(f"{name} {'identical' if same else 'DIFFERENT'}" for name, same in identical.items())
        + f" across {world_size} rank(s); sha256 {digest[:16]}",
        flush=True,
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        saved = {"rank": rank, "world_size": world_size, "sha256": digest, "identical": identical}
        torch.save({**saved, **{name: t.cpu() for name, t in checks.items()}, **record}, out / f"rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        print(summary)
    if not all(identical.values()):
        raise SystemExit(f"rank {rank}: ranks disagree: {identical}")
