"""Cifar10Mnist: an MNIST digit blended onto a CIFAR-10 image, tasks = CIFAR class and digit."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.nn.functional import interpolate

from torch_moo._validation import check_count, check_flag, check_real, check_root
from torch_moo.datasets._base import Transform, TwoTaskImages, to_uint8
from torch_moo.datasets.readers import load_cifar10, load_mnist

__all__ = ["Cifar10Mnist"]

_CHUNK = 8192


class Cifar10Mnist(TwoTaskImages):
    """A CIFAR-10 image with an MNIST digit blended on top; tasks: the CIFAR class, the digit.

    Hotegni, Peitz & Berkemeier, arXiv:2308.12243 (code github.com/salomonhotegni/MDMTN,
    ``Create_Cifar10Mnist_dataset.py``). Every CIFAR-10 image of the split gets a random MNIST
    image of the same split (drawn with ``seed``; distinct while MNIST has enough images, which
    holds for the real sets: 60,000 digits for 50,000 training images, 10,000 for 10,000). The
    digit is resized from 28 x 28 to 32 x 32 with :func:`torch.nn.functional.interpolate`
    (``mode="bilinear"``), its grey value copied to the three colour channels, and blended where
    it is non-zero: ``out = (1 - alpha) * cifar + alpha * digit`` there, ``out = cifar``
    elsewhere. ``alpha`` defaults to the reference's ``128 / 255``. The result is rounded to 8
    bits. Labels: ``(CIFAR class, digit)``.

    Items are ``(image, cifar_class, digit)``, ``image`` a ``float32`` RGB tensor of shape
    ``(3, 32, 32)`` in ``[0, 1]`` (no mean/std normalisation; pass a ``transform`` for that).

    Args:
        root: where the CIFAR-10 python batches are (``root/cifar-10-batches-py/`` or ``root``,
            see :func:`~torch_moo.datasets.load_cifar10`), and the raw MNIST files unless
            ``mnist_root`` is given.
        train: the training split, else the test split.
        seed: draws which digit goes on which image.
        alpha: opacity of the digit, in ``[0, 1]``.
        mnist_root: where the raw MNIST files are (default ``root``), see
            :func:`~torch_moo.datasets.load_mnist`.
        download: fetch missing files with torchvision's downloaders (needs torchvision).
        transform: applied to each image by ``__getitem__``.

    Attributes:
        digits: ``(N,)`` index of the MNIST image blended onto each CIFAR-10 image.
    """

    task_names = ("cifar10", "digit")

    def __init__(
        self,
        root: str | os.PathLike,
        train: bool = True,
        *,
        seed: int = 0,
        alpha: float = 128 / 255,
        mnist_root: str | os.PathLike | None = None,
        download: bool = False,
        transform: Transform | None = None,
    ) -> None:
        root = check_root("root", root)
        mnist_root = root if mnist_root is None else check_root("mnist_root", mnist_root)
        train = check_flag("train", train)
        download = check_flag("download", download)
        seed = check_count("seed", seed, minimum=0)
        alpha = check_real("alpha", alpha, minimum=0.0)
        if alpha > 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        pictures, classes = load_cifar10(root, train, download=download)
        digits, digit_labels = load_mnist(mnist_root, train, download=download)
        count = len(pictures)
        rng = np.random.default_rng([seed, int(train)])
        if len(digits) >= count:
            chosen = rng.permutation(len(digits))[:count]
        else:
            chosen = rng.integers(0, len(digits), size=count)
        height, width = pictures.shape[2:]
        output = torch.empty(count, 3, height, width, dtype=torch.uint8)
        for start in range(0, count, _CHUNK):
            stop = min(start + _CHUNK, count)
            digit = torch.from_numpy(digits[chosen[start:stop]]).float().unsqueeze(1)
            digit = interpolate(digit, size=(height, width), mode="bilinear", align_corners=False)
            opacity = alpha * (digit > 0)
            picture = torch.from_numpy(pictures[start:stop]).float()
            output[start:stop] = to_uint8(picture * (1 - opacity) + digit * opacity)
        self.digits = torch.from_numpy(chosen)
        targets = torch.from_numpy(np.stack([classes, digit_labels[chosen]], axis=1))
        super().__init__(output, targets, scale=255.0, transform=transform)
