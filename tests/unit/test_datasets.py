"""The two-task image sets, on small fake raw files written here (no network)."""

from __future__ import annotations

import gzip
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from torch_moo.datasets import Cifar10Mnist, MultiMNIST, TwoDigits, TwoHeadCNN, load_cifar10, load_mnist, read_idx


# ----------------------------------------------------------------------------- fake raw files
def write_idx(path, array: np.ndarray, code: int = 0x08, compress: bool = False) -> None:
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[code]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    raw = header + np.asarray(array, dtype).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if compress else raw)


def fake_digit_value(label):
    return (label + 1) * 20  # a uniform "digit" whose brightness encodes its label


def write_mnist(directory, train: bool, labels, compress: bool, block: bool = False) -> None:
    """Fake MNIST: digit ``k`` is a 28 x 28 square of value 20 (k + 1), or (``block``) a centred
    12 x 12 square of that value on black."""
    labels = np.asarray(labels, np.uint8)
    images = np.zeros((len(labels), 28, 28), np.uint8)
    values = fake_digit_value(labels.astype(int))[:, None, None]
    if block:
        images[:, 8:20, 8:20] = values
    else:
        images[:] = values
    prefix, suffix = ("train" if train else "t10k"), (".gz" if compress else "")
    write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, compress=compress)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress=compress)


def cifar_colour(label):
    return np.array([10 * label, 100, 250 - 10 * label])  # red and blue encode the class


def write_cifar(directory, names_and_labels) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, labels in names_and_labels.items():
        colours = np.stack([cifar_colour(label) for label in labels]).astype(np.uint8)
        data = np.repeat(colours, 1024, axis=1)  # red plane, green plane, blue plane
        with open(directory / name, "wb") as file:
            pickle.dump({b"data": data, b"labels": list(labels), b"batch_label": name.encode()}, file)


TRAIN_LABELS = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]
TEST_LABELS = [0, 7, 2, 8, 8]


@pytest.fixture
def mnist_root(tmp_path):
    """torchvision's layout, gzip for train; plain files directly in root for test."""
    write_mnist(tmp_path / "MNIST" / "raw", True, TRAIN_LABELS, compress=True)
    write_mnist(tmp_path, False, TEST_LABELS, compress=False)
    return tmp_path


# ----------------------------------------------------------------------------------- readers
@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("code", [0x08, 0x0C, 0x0D])
def test_read_idx_round_trips(tmp_path, compress, code):
    array = np.arange(24).reshape(2, 3, 4)
    write_idx(tmp_path / "file", array, code=code, compress=compress)
    result = read_idx(tmp_path / "file")
    assert result.shape == (2, 3, 4) and result.dtype.isnative
    np.testing.assert_array_equal(result, array)


def test_read_idx_rejects_other_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="is not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((2, 3), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"shape \(2, 3\) \(18 bytes\) but the file has 17 bytes"):
        read_idx(tmp_path / "short")


def test_load_mnist_reads_both_layouts(mnist_root):
    images, labels = load_mnist(mnist_root, train=True)
    assert images.shape == (12, 28, 28) and images.dtype == np.uint8 and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, TRAIN_LABELS)
    images, labels = load_mnist(mnist_root, train=False)
    np.testing.assert_array_equal(images[:, 0, 0], fake_digit_value(np.array(TEST_LABELS)))


def test_load_mnist_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"put train-images-idx3-ubyte\[.gz\] and train-labels-idx1-ubyte"):
        load_mnist(tmp_path)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if torchvision were not installed
    with pytest.raises(ImportError, match="download=True needs torchvision.*put the raw files in .*MNIST/raw"):
        load_mnist(tmp_path, download=True)
    write_mnist(tmp_path, True, [1, 2, 3], compress=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([1, 2], np.uint8))
    with pytest.raises(ValueError, match="expected 3 labels"):
        load_mnist(tmp_path)
    with pytest.raises(TypeError, match="root must be a path"):
        load_mnist(3)
    with pytest.raises(TypeError, match="train must be a bool, got str 'yes'"):
        load_mnist(tmp_path, train="yes")


def test_load_cifar10(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py", {f"data_batch_{i}": [i, i + 1] for i in range(1, 6)})
    write_cifar(tmp_path, {"test_batch": [7, 0, 9]})  # directly in root
    images, labels = load_cifar10(tmp_path)
    assert images.shape == (10, 3, 32, 32) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, [1, 2, 2, 3, 3, 4, 4, 5, 5, 6])
    np.testing.assert_array_equal(images[3, :, 5, 7], cifar_colour(3))  # channel order kept
    assert load_cifar10(tmp_path, train=False)[0].shape == (3, 3, 32, 32)


def test_load_cifar10_errors(tmp_path, monkeypatch):
    write_cifar(tmp_path / "cifar-10-batches-py", {"data_batch_1": [0], "data_batch_2": [1]})
    with pytest.raises(FileNotFoundError, match="data_batch_3, data_batch_4, data_batch_5 not found"):
        load_cifar10(tmp_path)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ImportError, match="download=True needs torchvision to fetch CIFAR10"):
        load_cifar10(tmp_path, download=True)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as file:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, file)
    with pytest.raises(ValueError, match=r"expected 'data' of shape \(N, 3072\)"):
        load_cifar10(tmp_path, train=False)


# --------------------------------------------------------------------------------- MultiMNIST
def test_multimnist_places_left_and_right_digits(mnist_root):
    data = MultiMNIST(mnist_root, train=True, seed=0)
    assert len(data) == 12 and data.task_names == ("left", "right")
    images, left, right = data.tensors()
    assert images.shape == (12, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert left.tolist() == TRAIN_LABELS
    assert right.tolist() == [TRAIN_LABELS[p] for p in data.partners]
    assert (data.partners != torch.arange(12)).all()
    pixels = (images[:, 0] * 255).round().long()
    # Canvas rows 0-5 hold only the first digit, rows 28-33 only the second (6 px lower).
    assert pixels[:, 1, 12].tolist() == fake_digit_value(left).tolist()
    assert pixels[:, 23, 12].tolist() == fake_digit_value(right).tolist()
    assert pixels[:, 12, 12].tolist() == fake_digit_value(torch.maximum(left, right)).tolist()
    image, first, second = data[4]
    assert image.shape == (1, 28, 28) and (first, second) == (left[4].item(), right[4].item())


def test_multimnist_is_seeded(mnist_root):
    first, again = MultiMNIST(mnist_root, seed=3), MultiMNIST(mnist_root, seed=3)
    assert torch.equal(first.data, again.data) and torch.equal(first.targets, again.targets)
    assert not torch.equal(first.partners, MultiMNIST(mnist_root, seed=4).partners)
    test = MultiMNIST(mnist_root, train=False)
    assert len(test) == 5 and test.targets[:, 0].tolist() == TEST_LABELS


def test_multimnist_errors(tmp_path, mnist_root):
    with pytest.raises(FileNotFoundError, match="MNIST test files not found"):
        MultiMNIST(tmp_path / "nowhere", train=False)
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        MultiMNIST(mnist_root, seed=-1)
    with pytest.raises(TypeError, match="transform must be callable or None, got int 3"):
        MultiMNIST(mnist_root, transform=3)
    write_mnist(tmp_path / "one", True, [5], compress=False)
    with pytest.raises(ValueError, match="at least 2 MNIST images to pair, the train split has 1"):
        MultiMNIST(tmp_path / "one")


# ------------------------------------------------------------------------------ Cifar10Mnist
@pytest.fixture
def cifar_root(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py", {f"data_batch_{i}": [2 * i - 2, 2 * i - 1] for i in range(1, 6)})
    write_cifar(tmp_path / "cifar-10-batches-py", {"test_batch": [4, 2]})
    write_mnist(tmp_path / "MNIST" / "raw", True, TRAIN_LABELS, compress=True, block=True)
    write_mnist(tmp_path / "MNIST" / "raw", False, [6], compress=False, block=True)
    return tmp_path


def test_cifar10mnist_blends_the_digit(cifar_root):
    alpha = 0.25
    data = Cifar10Mnist(cifar_root, seed=1, alpha=alpha)
    images, classes, digits = data.tensors()
    assert images.shape == (10, 3, 32, 32) and images.dtype == torch.float32 and data.task_names == ("cifar10", "digit")
    assert images.min() >= 0 and images.max() <= 1
    assert classes.tolist() == list(range(10))
    assert digits.tolist() == [TRAIN_LABELS[i] for i in data.digits]
    assert len(set(data.digits.tolist())) == 10  # enough digits: no repeats
    pixels = (images * 255).round()
    for index, (cls, digit) in enumerate(zip(classes.tolist(), digits.tolist())):
        colour = torch.tensor(cifar_colour(cls), dtype=torch.float32)
        assert torch.equal(pixels[index, :, 0, 0], colour)  # no digit in the corner
        blended = ((1 - alpha) * colour + alpha * fake_digit_value(digit)).round()
        assert torch.equal(pixels[index, :, 16, 16], blended)  # digit in the centre, grey on RGB


def test_cifar10mnist_is_seeded_and_reuses_digits_when_short(cifar_root):
    first, again = Cifar10Mnist(cifar_root), Cifar10Mnist(cifar_root)
    assert torch.equal(first.data, again.data) and torch.equal(first.digits, again.digits)
    assert not torch.equal(first.digits, Cifar10Mnist(cifar_root, seed=5).digits)
    test = Cifar10Mnist(cifar_root, train=False)  # two CIFAR images, one MNIST digit
    assert test.targets.tolist() == [[4, 6], [2, 6]]


def test_cifar10mnist_errors(tmp_path, cifar_root):
    with pytest.raises(ValueError, match="alpha must be in \\[0, 1\\], got 1.5"):
        Cifar10Mnist(cifar_root, alpha=1.5)
    with pytest.raises(FileNotFoundError, match="CIFAR-10 batches test_batch not found"):
        Cifar10Mnist(tmp_path / "empty", train=False)
    with pytest.raises(FileNotFoundError, match="MNIST train files not found"):
        Cifar10Mnist(cifar_root, mnist_root=tmp_path / "empty")


# --------------------------------------------------------------------------------- TwoDigits
@pytest.fixture(scope="module")
def sklearn_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    return digits.images.astype(np.uint8), digits.target


def test_two_digits_puts_the_labelled_digits_left_and_right(sklearn_digits):
    pixels, labels = sklearn_digits
    data = TwoDigits(size=500, seed=1)
    images, left, right = data.tensors()
    assert images.shape == (500, 1, 16, 16) and images.dtype == torch.float32
    assert images.min() == 0 and images.max() == 1
    sources = data.sources.numpy()
    assert left.tolist() == labels[sources[:, 0]].tolist() and right.tolist() == labels[sources[:, 1]].tolist()
    for image, (left_source, right_source), (r0, c0, r1, c1) in zip(images, sources, data.positions.tolist()):
        assert c0 in (0, 1) and c1 in (7, 8) and min(r0, r1) >= 0 and max(r0, r1) <= 8
        canvas = np.zeros((16, 16), np.uint8)
        canvas[r0 : r0 + 8, c0 : c0 + 8] = pixels[left_source]
        canvas[r1 : r1 + 8, c1 : c1 + 8] = np.maximum(canvas[r1 : r1 + 8, c1 : c1 + 8], pixels[right_source])
        np.testing.assert_array_equal(image[0].numpy(), canvas / 16)


def test_two_digits_split_and_seeds():
    train, test = TwoDigits(seed=0), TwoDigits(train=False, seed=1)
    assert (len(train), len(test)) == (20_000, 4_000)
    assert not set(train.sources.flatten().tolist()) & set(test.sources.flatten().tolist())
    assert set(train.targets.flatten().tolist()) == set(range(10))
    again = TwoDigits(seed=0)
    assert torch.equal(train.data, again.data) and torch.equal(train.targets, again.targets)
    assert not torch.equal(train.data[:100], TwoDigits(size=100, seed=2).data)
    other_split = TwoDigits(train=False, split_seed=1, size=4_000)
    assert not torch.equal(test.sources.unique(), other_split.sources.unique())


def test_two_digits_as_a_dataset():
    data = TwoDigits(size=10, transform=lambda image: image * 2)
    image, left, right = data[3]
    assert isinstance(left, int) and isinstance(right, int) and image.max() <= 2
    assert torch.equal(image, data.tensors()[0][3] * 2)
    images, lefts, rights = next(iter(DataLoader(data, batch_size=4)))
    assert images.shape == (4, 1, 16, 16) and lefts.dtype == torch.int64 and rights.shape == (4,)
    assert repr(data) == "TwoDigits(10 images of 1x16x16, tasks=('left', 'right'))"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"size": 0}, ValueError, "size must be >= 1, got 0"),
        ({"size": 2.5}, TypeError, "size must be an int, got float 2.5"),
        ({"seed": -1}, ValueError, "seed must be >= 0, got -1"),
        ({"split_seed": "a"}, TypeError, "split_seed must be an int, got str 'a'"),
        ({"test_fraction": 1.0}, ValueError, "test_fraction must be < 1, got 1.0"),
        ({"test_fraction": 0}, ValueError, "test_fraction must be > 0.0, got 0.0"),
        ({"train": 1}, TypeError, "train must be a bool, got int 1"),
    ],
)
def test_two_digits_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        TwoDigits(**kwargs)


def test_two_digits_without_scikit_learn():
    # A fresh interpreter in which scikit-learn cannot be found (the data set caches what it found).
    script = (
        "import importlib.util\n"
        "find = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *args: None if name == 'sklearn' else find(name, *args)\n"
        "from torch_moo.datasets import TwoDigits\n"
        "TwoDigits(size=1)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    expected = "ImportError: TwoDigits needs scikit-learn (its bundled digits): pip install torch-moo[examples]"
    assert expected in run.stderr


def test_two_head_cnn_predicts_in_chunks_what_forward_gives():
    torch.manual_seed(0)
    model = TwoHeadCNN()
    images = torch.randn(10, 1, 16, 16)
    left, right = model.predict(images, chunk_size=3)
    with torch.no_grad():
        expected = model(images)
    torch.testing.assert_close(left, expected[0])
    torch.testing.assert_close(right, expected[1])
    assert not left.requires_grad and left.shape == (10, 10)
