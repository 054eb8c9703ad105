"""The dataset class shared by every two-task image set."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["TwoTaskImages"]

Transform = Callable[[Tensor], Tensor]


class TwoTaskImages(Dataset):
    """Images with two class labels each; items are ``(image, label_0, label_1)``.

    Images are stored compactly as ``uint8`` (:attr:`data`, shape ``(N, C, H, W)``) and handed
    out as ``float32`` in ``[0, 1]`` (``data / scale``), then through ``transform`` if given.
    Labels are plain ``int`` (a :class:`~torch.utils.data.DataLoader` collates them to
    ``int64`` tensors); :attr:`targets` holds all of them, shape ``(N, 2)``.
    For full-batch work, :meth:`tensors` returns everything at once.
    """

    #: What the two labels mean, in order.
    task_names: tuple[str, str] = ("task_0", "task_1")

    def __init__(self, data: Tensor, targets: Tensor, *, scale: float, transform: Transform | None = None) -> None:
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None, got {type(transform).__name__} {transform!r}")
        self.data = data
        self.targets = targets
        self.scale = scale
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        image = self.data[index].float().div_(self.scale)
        if self.transform is not None:
            image = self.transform(image)
        first, second = self.targets[index].tolist()
        return image, first, second

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        """All images as one ``float32`` tensor in ``[0, 1]`` (``transform`` is not applied) and
        the two label vectors (``int64``)."""
        return self.data.float().div_(self.scale), self.targets[:, 0].clone(), self.targets[:, 1].clone()

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.data.shape[1:]))
        return f"{type(self).__name__}({len(self)} images of {shape}, tasks={self.task_names})"


def to_uint8(images: Tensor) -> Tensor:
    """Round values in ``[0, 255]`` to ``uint8``."""
    return images.round_().clamp_(0, 255).to(torch.uint8)
