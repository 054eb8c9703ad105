"""MultiMNIST: two overlapping MNIST digits, tasks = left digit and right digit."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.nn.functional import interpolate

from torch_moo._validation import check_count, check_flag, check_root
from torch_moo.datasets._base import Transform, TwoTaskImages, to_uint8
from torch_moo.datasets.readers import load_mnist

__all__ = ["MultiMNIST"]

_CHUNK = 8192  # images composed at a time, to bound the memory of the 36 x 36 canvases


class MultiMNIST(TwoTaskImages):
    """Two MNIST digits on one 28 x 28 image; tasks: the left (upper) and right (lower) digit.

    The construction of Sener & Koltun, *Multi-Task Learning as Multi-Objective Optimization*
    (NeurIPS 2018), as used by Hotegni, Peitz & Berkemeier (arXiv:2308.12243, code
    github.com/salomonhotegni/MDMTN): every MNIST image of the split gets a random partner (drawn
    with ``seed``, never itself); the image goes to the top-left corner of a 36 x 36 canvas, rows
    and columns 0-27, the partner 6 px further down and to the right, rows and columns 6-33,
    where they overlap the pixel-wise maximum is kept, and the canvas is resized to 28 x 28 with
    :func:`torch.nn.functional.interpolate` (``mode="bilinear", antialias=True``: a triangle
    filter that averages over the shrunk area, close to the reference's anti-aliased
    ``skimage.transform.resize``) and rounded to 8 bits. Labels: ``(image's digit, partner's
    digit)``. One image per MNIST image: 60,000 for training, 10,000 for test.

    Items are ``(image, left, right)``, ``image`` a ``float32`` tensor of shape ``(1, 28, 28)``
    in ``[0, 1]`` (no mean/std normalisation; pass a ``transform`` for that).

    Args:
        root: where the raw MNIST files are, see :func:`~torch_moo.datasets.load_mnist`
            (``root/MNIST/raw/`` as torchvision writes it, or ``root``).
        train: the training split, else the test split.
        seed: draws the partners.
        download: fetch MNIST with torchvision's downloader when the files are absent
            (needs torchvision).
        transform: applied to each image by ``__getitem__``.

    Attributes:
        partners: ``(N,)`` index of each image's partner in the MNIST split.
    """

    task_names = ("left", "right")

    def __init__(
        self,
        root: str | os.PathLike,
        train: bool = True,
        *,
        seed: int = 0,
        download: bool = False,
        transform: Transform | None = None,
    ) -> None:
        root = check_root("root", root)
        train = check_flag("train", train)
        seed = check_count("seed", seed, minimum=0)
        digits, labels = load_mnist(root, train, download=check_flag("download", download))
        count, height, width = digits.shape
        if count < 2:
            split = "train" if train else "test"
            raise ValueError(f"MultiMNIST needs at least 2 MNIST images to pair, the {split} split has {count}")
        rng = np.random.default_rng([seed, int(train)])
        partners = (np.arange(count) + rng.integers(1, count, size=count)) % count
        shift = 6
        images = torch.from_numpy(digits)
        output = torch.empty(count, 1, height, width, dtype=torch.uint8)
        for start in range(0, count, _CHUNK):
            stop = min(start + _CHUNK, count)
            canvas = torch.zeros(stop - start, 1, height + shift + 2, width + shift + 2)
            canvas[:, 0, :height, :width] = images[start:stop]
            right = canvas[:, 0, shift : shift + height, shift : shift + width]
            torch.maximum(right, images[partners[start:stop]].float(), out=right)
            output[start:stop] = to_uint8(interpolate(canvas, size=(height, width), mode="bilinear", antialias=True))
        self.partners = torch.from_numpy(partners)
        targets = torch.from_numpy(np.stack([labels, labels[partners]], axis=1))
        super().__init__(output, targets, scale=255.0, transform=transform)
