"""Where the library branches on the device: off the CPU, the path without host synchronisations.

On the CPU, reading a flag from a tensor costs nothing, so loops stop as soon as they are done;
on an accelerator each read stalls the launch queue, so they run a fixed number of no-op-once-done
iterations instead. :func:`device_path` makes the CPU take the accelerator's path, so that tests
and benchmarks can count that path's ops and host reads without a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor

__all__ = ["device_path", "reads_are_free"]

_forced = [False]


def reads_are_free(tensor: Tensor) -> bool:
    """Whether reading a value of ``tensor`` on the host costs no synchronisation: on the CPU, unless
    :func:`device_path` is in force."""
    return tensor.device.type == "cpu" and not _forced[0]


@contextlib.contextmanager
def device_path() -> Iterator[None]:
    """Take the accelerator's path (no host reads to stop early) on the CPU too, within the block."""
    before, _forced[0] = _forced[0], True
    try:
        yield
    finally:
        _forced[0] = before
