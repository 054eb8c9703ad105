"""Readers for the raw MNIST (IDX) and CIFAR-10 (python pickle) files, with no torchvision.

The layouts are the ones torchvision's ``MNIST`` and ``CIFAR10`` write with ``download=True``
(``root/MNIST/raw/`` and ``root/cifar-10-batches-py/``); the files may also lie directly in
``root``.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np

from torch_moo._validation import check_flag, check_root

__all__ = ["load_cifar10", "load_mnist", "read_idx"]

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "the IDX file format"); data is big-endian.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not, into a numpy array.

    LeCun, Cortes & Burges, *The MNIST database*: a 4-byte magic number (two zero bytes, the
    type code, the number of dimensions), one big-endian ``int32`` per dimension, then the
    values in C order.
    """
    path = Path(path)
    with open(path, "rb") as file:
        raw = file.read()
    if raw[:2] == b"\x1f\x8b":  # the gzip magic number, whatever the file is called
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (magic number {raw[:4].hex() or 'missing'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions)")
    shape = tuple(int(size) for size in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + dtype.itemsize * int(np.prod(shape))
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(directories: list[Path], names: list[str]) -> Path | None:
    for directory in directories:
        for name in names:
            if (directory / name).is_file():
                return directory / name
    return None


def _mnist_paths(root: Path, train: bool) -> tuple[Path, Path] | None:
    prefix = "train" if train else "t10k"
    directories = [root / "MNIST" / "raw", root / "raw", root]
    found = []
    for kind, dims in (("images", 3), ("labels", 1)):
        stems = [f"{prefix}-{kind}-idx{dims}-ubyte", f"{prefix}-{kind}.idx{dims}-ubyte"]
        path = _find(directories, [name for stem in stems for name in (stem, stem + ".gz")])
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


def _download(dataset: str, root: Path, train: bool, where: str) -> None:
    try:
        import torchvision.datasets
    except ImportError as error:
        raise ImportError(
            f"download=True needs torchvision to fetch {dataset} (pip install torchvision); "
            f"without it, put the raw files in {where} yourself"
        ) from error
    getattr(torchvision.datasets, dataset)(str(root), train=train, download=True)


def load_mnist(root: str | os.PathLike, train: bool = True, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The MNIST images (``uint8``, ``(N, 28, 28)``) and labels (``int64``, ``(N,)``).

    Reads ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` (``t10k-...`` for the test
    split), each optionally ``.gz``, from ``root/MNIST/raw/`` (torchvision's layout),
    ``root/raw/`` or ``root``. With ``download=True`` and the files absent, torchvision's
    downloader fetches them into ``root/MNIST/raw/``.
    """
    root = check_root("root", root)
    train = check_flag("train", train)
    download = check_flag("download", download)
    paths = _mnist_paths(root, train)
    prefix = "train" if train else "t10k"
    where = f"{root / 'MNIST' / 'raw'} or {root}"
    if paths is None and download:
        _download("MNIST", root, train, where)
        paths = _mnist_paths(root, train)
    if paths is None:
        raise FileNotFoundError(
            f"MNIST {'train' if train else 'test'} files not found: put {prefix}-images-idx3-ubyte[.gz] and "
            f"{prefix}-labels-idx1-ubyte[.gz] in {where}, or pass download=True with torchvision installed"
        )
    images, labels = (read_idx(path) for path in paths)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{paths[0]}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(f"{paths[1]}: expected {len(images)} labels (one per image), got shape {labels.shape}")
    return images, labels.astype(np.int64)


def _cifar_directory(root: Path, names: list[str]) -> Path:
    """The first of ``root/cifar-10-batches-py`` and ``root`` holding all ``names`` (else the
    one holding more of them, for the error message)."""
    candidates = [root / "cifar-10-batches-py", root]
    return max(candidates, key=lambda directory: sum((directory / name).is_file() for name in names))


def load_cifar10(root: str | os.PathLike, train: bool = True, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The CIFAR-10 images (``uint8``, ``(N, 3, 32, 32)``, RGB) and labels (``int64``, ``(N,)``).

    Krizhevsky, *Learning Multiple Layers of Features from Tiny Images* (2009), python version:
    pickled dicts with ``data`` (``N x 3072``, the red, green and blue planes in row-major order)
    and ``labels``; ``data_batch_1`` to ``data_batch_5`` for training, ``test_batch`` for test,
    in ``root/cifar-10-batches-py/`` (torchvision's layout) or ``root``. Pickle runs code from
    the file: load only files you trust. With ``download=True`` and the files absent,
    torchvision's downloader fetches them.
    """
    root = check_root("root", root)
    train = check_flag("train", train)
    download = check_flag("download", download)
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    directory = _cifar_directory(root, names)
    if download and not all((directory / name).is_file() for name in names):
        _download("CIFAR10", root, train, str(root / "cifar-10-batches-py"))
        directory = _cifar_directory(root, names)
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 batches {', '.join(missing)} not found in {directory}: put the python-version batches "
            f"there (cifar-10-batches-py/), or pass download=True with torchvision installed"
        )
    images, labels = [], []
    for name in names:
        with open(directory / name, "rb") as file:
            batch = pickle.load(file, encoding="bytes")
        batch = {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}
        if "data" not in batch or "labels" not in batch:
            raise ValueError(f"{directory / name}: expected a dict with 'data' and 'labels', got keys {sorted(batch)}")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(batch["labels"]) != len(data):
            raise ValueError(
                f"{directory / name}: expected 'data' of shape (N, 3072) and N labels, "
                f"got {data.shape} and {len(batch['labels'])} labels"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch["labels"], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)
