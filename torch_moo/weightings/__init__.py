"""Weighting rules: from the Gram matrix of the objectives' gradients, or from the loss values.

Gram-space rules (:class:`GramWeighting`) drive :class:`~torch_moo.JacobianDescent`; loss-space
rules (:class:`LossWeighting`) drive :class:`~torch_moo.WeightedLossDescent`. Each is a small
:class:`torch.nn.Module` whose state lives in buffers.
"""

from torch_moo.weightings._base import GramWeighting, LossWeighting, Weighting
from torch_moo.weightings.aligned_mtl import AlignedMTL
from torch_moo.weightings.cagrad import CAGrad
from torch_moo.weightings.chebyshev import ChebyshevLagrangian
from torch_moo.weightings.dwa import DWA
from torch_moo.weightings.famo import FAMO
from torch_moo.weightings.imtlg import IMTLG
from torch_moo.weightings.mgda import MGDA
from torch_moo.weightings.minmax import MinMax
from torch_moo.weightings.nash_mtl import NashMTL
from torch_moo.weightings.pcgrad import PCGrad
from torch_moo.weightings.rlw import RLW
from torch_moo.weightings.simple import Constant, Mean
from torch_moo.weightings.stch import SmoothTchebycheff
from torch_moo.weightings.uncertainty import Uncertainty
from torch_moo.weightings.upgrad import DualProj, UPGrad

__all__ = [
    "DWA",
    "FAMO",
    "IMTLG",
    "MGDA",
    "RLW",
    "AlignedMTL",
    "CAGrad",
    "ChebyshevLagrangian",
    "Constant",
    "DualProj",
    "GramWeighting",
    "LossWeighting",
    "Mean",
    "MinMax",
    "NashMTL",
    "PCGrad",
    "SmoothTchebycheff",
    "UPGrad",
    "Uncertainty",
    "Weighting",
]
