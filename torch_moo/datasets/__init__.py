"""Two-task image sets for examples and benchmarks.

- :class:`TwoDigits`: offline, from the 8x8 digits bundled with scikit-learn (no download).
- :class:`MultiMNIST`: two overlapping MNIST digits (Sener & Koltun 2018).
- :class:`Cifar10Mnist`: an MNIST digit blended onto a CIFAR-10 image (Hotegni et al. 2023).
- :class:`TwoHeadCNN`, :class:`TwoHeadMLP`: the two-task networks the examples and benchmarks train on
  :class:`TwoDigits`.

The MNIST and CIFAR-10 sets read the standard raw files themselves (:func:`load_mnist`,
:func:`load_cifar10`); torchvision is needed only to download them.
"""

from torch_moo.datasets._base import TwoTaskImages
from torch_moo.datasets.cifar10mnist import Cifar10Mnist
from torch_moo.datasets.digits import TwoDigits
from torch_moo.datasets.models import TwoHeadCNN, TwoHeadMLP
from torch_moo.datasets.multimnist import MultiMNIST
from torch_moo.datasets.readers import load_cifar10, load_mnist, read_idx

__all__ = [
    "Cifar10Mnist",
    "MultiMNIST",
    "TwoDigits",
    "TwoHeadCNN",
    "TwoHeadMLP",
    "TwoTaskImages",
    "load_cifar10",
    "load_mnist",
    "read_idx",
]
