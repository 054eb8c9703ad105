"""What one training step dispatches: aten ops (about one kernel launch each on a GPU) and host reads.

A copy to the host (``tensor.to("cpu", copy=True)``, which off the CPU waits for the device) counts
as a host read, and the ops on what it returned, on it alone, run on the host: they are counted
apart (:attr:`Dispatches.host_ops`), neither as launches nor, for their own reads, as host reads.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakTensorKeyDictionary

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
    "aten::squeeze_",
    "aten::unsqueeze_",
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
    # the optimizers' step() profiling markers
    "profiler::_record_function_enter_new",
    "profiler::_record_function_exit",
}


def _to_host(name: str, inputs: list[torch.Tensor], kwargs: dict[str, Any]) -> bool:
    """Whether the op copies a tensor to the host: ``_to_copy`` to the CPU without a dtype change (on the
    CPU ``.to("cpu")`` dispatches nothing; ``.to("cpu", copy=True)`` stands for the transfer)."""
    device, dtype = kwargs.get("device"), kwargs.get("dtype")
    return (
        name == "aten::_to_copy"
        and device is not None
        and torch.device(device).type == "cpu"
        and dtype in (None, inputs[0].dtype)
    )


class Dispatches(TorchDispatchMode):
    """Counts the aten ops dispatched within the block, by name; views and metadata ops apart, and the
    ops on host copies apart (:attr:`host_ops`)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.host_ops: Counter[str] = Counter()
        self.transfers = 0  # copies to the host
        self._host = WeakTensorKeyDictionary()  # tensors on the host: copies to it and what ops made of them
        self._made = WeakTensorKeyDictionary()  # made by factories, and by ops on those alone
        self._pending = WeakTensorKeyDictionary()  # what such a tensor's making cost (op names), until it is used

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func._schema.name
        out = func(*args, **kwargs)
        # lift_fresh takes a constant that torch.tensor built outside the mode: a factory too
        inputs = [leaf for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)]
        if name == "aten::lift_fresh":
            inputs = []
        self.ops[name] += 1
        # What a factory makes (torch.where's wrapped scalar, arange, eye), and ops on that alone, are
        # pending: counted as launches until a host op takes them (then as host ops).
        pending = [self._pending.pop(leaf) for leaf in inputs if leaf in self._pending]
        if all(leaf in self._host for leaf in inputs if leaf not in self._made) and inputs:
            if any(leaf in self._host for leaf in inputs):  # a host op
                for bill in pending:
                    for made in bill:
                        self.ops[made] -= 1
                        self.host_ops[made] += 1
                    bill.clear()
                self.ops[name] -= 1
                self.host_ops[name] += 1
                self._mark(out, self._host)
                return out
            bill = [made for owed in pending for made in owed] + [name]
            for owed in pending:
                owed.clear()
            self._mark(out, self._made)
            self._bill(out, bill)
            return out
        for owed in pending:
            owed.clear()
        copied = _to_host(name, inputs, kwargs)
        self.transfers += copied
        if copied:
            self._mark(out, self._host)
        elif not inputs:
            self._mark(out, self._made)
            self._bill(out, [name])
        return out

    @staticmethod
    def _mark(out: Any, where: WeakTensorKeyDictionary) -> None:
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                where[leaf] = True

    def _bill(self, out: Any, bill: list[str]) -> None:
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._pending[leaf] = bill

    @property
    def launches(self) -> int:
        """Ops that launch work (views and metadata changes excluded)."""
        return sum(count for name, count in self.ops.items() if name not in FREE)

    @property
    def host_reads(self) -> int:
        """Reads of device values on the host and copies to the host: each a synchronisation off the CPU."""
        return sum(self.ops[name] for name in HOST_READS) + self.transfers

    @property
    def host_launches(self) -> int:
        """Ops on host copies (no kernel launches on an accelerator)."""
        return sum(count for name, count in self.host_ops.items() if name not in FREE)
