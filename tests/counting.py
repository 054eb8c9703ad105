"""What one training step dispatches: aten ops (about one kernel launch each on a GPU) and host reads."""

from __future__ import annotations

from collections import Counter
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

# ops that read a device value on the host: a synchronisation on an accelerator
HOST_READS = {"aten::_local_scalar_dense", "aten::equal", "aten::is_nonzero"}
# views and metadata changes launch no kernel
FREE = {
    "aten::view",
    "aten::_unsafe_view",
    "aten::detach",
    "aten::t",
    "aten::alias",
    "aten::expand",
    "aten::as_strided",
    "aten::unsqueeze",
    "aten::squeeze",
    "aten::reshape",
    "aten::slice",
    "aten::select",
    "aten::permute",
    "aten::transpose",
    "aten::split",
    "aten::split_with_sizes",
    "aten::unbind",
    "aten::diagonal",
    "aten::lift_fresh",
    "aten::_reshape_alias",
    "aten::unsafe_split",
    "aten::chunk",
    "aten::narrow",
    "aten::_to_copy_noop",
}


class Dispatches(TorchDispatchMode):
    """Counts the aten ops dispatched within the block, by name; views and metadata ops apart."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[func._schema.name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def launches(self) -> int:
        """Ops that launch work (views and metadata changes excluded)."""
        return sum(count for name, count in self.ops.items() if name not in FREE)

    @property
    def host_reads(self) -> int:
        return sum(self.ops[name] for name in HOST_READS)
