"""TwoDigits: an offline two-task image set from the 8x8 digits that ship inside scikit-learn."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch

from torch_moo._validation import check_count, check_flag, check_real
from torch_moo.datasets._base import Transform, TwoTaskImages

__all__ = ["TwoDigits"]

_SIDE = 8  # the source digits are 8 x 8, values 0..16
_CANVAS = 16


@functools.cache
def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 digits of ``sklearn.datasets.load_digits`` as (uint8 (N, 8, 8), int64 (N,))."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ImportError("TwoDigits needs scikit-learn (its bundled digits): pip install torch-moo[examples]")
    # The CSV that load_digits reads, without importing sklearn.datasets (about a second).
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if csv.is_file():
        table = np.loadtxt(csv, delimiter=",")
        pixels, labels = table[:, :-1], table[:, -1]
    else:
        from sklearn.datasets import load_digits

        pixels, labels = load_digits(return_X_y=True)
    return pixels.reshape(-1, _SIDE, _SIDE).astype(np.uint8), labels.astype(np.int64)


def _split(labels: np.ndarray, test_fraction: float, split_seed: int, train: bool) -> np.ndarray:
    """The source indices of one split, stratified by class; the two splits are disjoint."""
    rng = np.random.default_rng(split_seed)
    chosen = []
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        held_out = round(test_fraction * len(members))
        chosen.append(members[held_out:] if train else members[:held_out])
    return np.sort(np.concatenate(chosen))


class TwoDigits(TwoTaskImages):
    """Two scikit-learn digits side by side on a 16 x 16 canvas; tasks: left digit, right digit.

    An offline stand-in for MultiMNIST (Sener & Koltun, *Multi-Task Learning as Multi-Objective
    Optimization*, NeurIPS 2018) built from the 1797 8x8 handwritten digits bundled with
    scikit-learn (``sklearn.datasets.load_digits``; UCI "Optical Recognition of Handwritten
    Digits"), so it needs no download and builds in a few hundredths of a second.

    Construction: the source digits are split per class into train and test parts
    (``test_fraction`` of each class held out, drawn with ``split_seed``), so the two splits never
    share a source image as long as they use the same ``split_seed``. Each image takes two random
    sources of its split (drawn with ``seed``), places the left one at column 0 or 1 and the
    right one at column 7 or 8 (so they may touch or overlap by up to two columns), each at an
    independent random row from 0 to 8 (vertical jitter over the whole canvas), and combines
    them by the pixel-wise maximum. Values are the digits' 0..16 scaled to ``[0, 1]``.

    Items are ``(image, left, right)``: ``image`` a ``float32`` tensor of shape ``(1, 16, 16)``.
    :meth:`~TwoTaskImages.tensors` gives all of them at once for full-batch use.

    Args:
        train: the training split, else the test split.
        size: number of images; default 20,000 for training and 4,000 for test.
        seed: draws the pairs and positions (the two splits use separate streams).
        test_fraction: share of each class's source digits held out for the test split.
        split_seed: draws the train/test partition of the source digits.
        transform: applied to each image by ``__getitem__``.

    Attributes:
        sources: ``(N, 2)`` indices of the left and right source digits in
            ``sklearn.datasets.load_digits()``.
        positions: ``(N, 4)`` top-left corners, ``(left_row, left_col, right_row, right_col)``.

    Example:
        >>> data = TwoDigits(size=100)
        >>> image, left, right = data[0]
        >>> image.shape, image.dtype, 0 <= left <= 9
        (torch.Size([1, 16, 16]), torch.float32, True)
    """

    task_names = ("left", "right")

    def __init__(
        self,
        train: bool = True,
        *,
        size: int | None = None,
        seed: int = 0,
        test_fraction: float = 0.25,
        split_seed: int = 0,
        transform: Transform | None = None,
    ) -> None:
        train = check_flag("train", train)
        size = (20_000 if train else 4_000) if size is None else check_count("size", size)
        seed = check_count("seed", seed, minimum=0)
        split_seed = check_count("split_seed", split_seed, minimum=0)
        test_fraction = check_real("test_fraction", test_fraction, minimum=0.0, strict=True)
        if test_fraction >= 1:
            raise ValueError(f"test_fraction must be < 1, got {test_fraction}")

        pixels, labels = _sklearn_digits()
        pool = _split(labels, test_fraction, split_seed, train)
        if len(pool) == 0:
            split = "train" if train else "test"
            raise ValueError(f"test_fraction={test_fraction} leaves no source digits for the {split} split")
        rng = np.random.default_rng([seed, int(train)])
        sources = pool[rng.integers(0, len(pool), size=(size, 2))]
        rows = rng.integers(0, _CANVAS - _SIDE + 1, size=(size, 2))
        cols = rng.integers(0, 2, size=(size, 2)) + np.array([0, _CANVAS - _SIDE - 1])

        canvas = np.zeros((size, _CANVAS, _CANVAS), dtype=np.uint8)
        index = np.arange(size)[:, None, None]
        offsets = np.arange(_SIDE)
        for side in (0, 1):
            r = rows[:, side, None, None] + offsets[None, :, None]
            c = cols[:, side, None, None] + offsets[None, None, :]
            canvas[index, r, c] = np.maximum(canvas[index, r, c], pixels[sources[:, side]])

        self.sources = torch.from_numpy(sources)
        self.positions = torch.from_numpy(np.stack([rows[:, 0], cols[:, 0], rows[:, 1], cols[:, 1]], axis=1))
        super().__init__(
            torch.from_numpy(canvas).unsqueeze(1),
            torch.from_numpy(labels[sources]),
            scale=16.0,
            transform=transform,
        )
