"""Differentiable sparsity objectives that take a place in the loss vector."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from torch_moo._layout import DENSE, parameter_layouts, unit_axis, units_first
from torch_moo._validation import check_choice, check_real

__all__ = ["ReweightedL1", "group_l2", "growl", "l1", "sparsifiable_parameters"]

Reduction = Literal["sum", "mean"]
Structure = Literal["row", "column"]

#: The groups: output or input neurons and channels (see :func:`group_l2`).
_STRUCTURES = ("row", "column")


def sparsifiable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The weight matrices and convolution kernels of ``module`` (parameters with two or more
    dimensions), skipping biases and normalisation scales."""
    return [parameter for parameter in module.parameters() if parameter.dim() >= 2]


def _select(name: str, params_or_module: nn.Module | Tensor | Iterable[Tensor]) -> list[Tensor]:
    """The tensors an objective penalises: a module's :func:`sparsifiable_parameters`, a single
    tensor, or every tensor of an iterable."""
    params: list[Tensor]
    if isinstance(params_or_module, nn.Module):
        params = list(sparsifiable_parameters(params_or_module))
    elif isinstance(params_or_module, Tensor):
        params = [params_or_module]
    else:
        try:
            params = list(params_or_module)
        except TypeError:
            raise TypeError(
                f"{name} takes a module, a tensor or an iterable of tensors, got {type(params_or_module).__name__}"
            ) from None
        for index, param in enumerate(params):
            if not isinstance(param, Tensor):
                raise TypeError(f"{name}: params_or_module[{index}] must be a tensor, got {type(param).__name__}")
    if not params:
        raise ValueError(f"{name} got no parameters to penalise")
    return params


def _reduce(total: Tensor, reduction: str, count: int) -> Tensor:
    return total / count if reduction == "mean" else total


def l1(params_or_module: nn.Module | Tensor | Iterable[Tensor], *, reduction: Reduction = "mean") -> Tensor:
    r"""The mean absolute weight :math:`\frac1N \sum_l \|W_l\|_1` (:math:`N` entries), or the :math:`\ell_1`
    norm :math:`\sum_l \|W_l\|_1`, as a differentiable objective.

    Reiners, Klamroth & Stiglmayr, arXiv:2008.13590 (cross-entropy vs :math:`\ell_1`).

    Args:
        params_or_module: a module (its weight matrices and kernels, see
            :func:`sparsifiable_parameters`), a tensor, or an iterable of tensors (all of them).
        reduction: ``"mean"`` (the default) divides by the number of entries: a few hundredths
            for a PyTorch-initialised network whatever its size, the scale of a per-sample loss
            it sits next to in a loss vector; ``"sum"`` for the norm, which grows with the model
            (about 1,800 for the quickstart's CNN) and, next to cross-entropies near 2, takes all
            of a Chebyshev or min-max weighting unless the preference is scaled down to match.

    Example:
        >>> l1(torch.nn.Linear(3, 2, bias=False)).shape
        torch.Size([])
    """
    check_choice("reduction", reduction, ["sum", "mean"])
    params = _select("l1", params_or_module)
    total = torch.stack([p.abs().sum() for p in params]).sum()
    return _reduce(total, reduction, sum(p.numel() for p in params))


class ReweightedL1:
    r"""Reweighted :math:`\ell_1`: each weight's magnitude divided by its magnitude at a reference point.

    Candès, Wakin & Boyd, *Enhancing sparsity by reweighted* :math:`\ell_1` *minimization*,
    J. Fourier Anal. Appl. 2008; used for sparse multi-task networks by Guo, Li, Sun, Qin, Yu &
    Zhang, *A min-max optimization framework for sparse multi-task deep neural network*,
    Neurocomputing 2025. Calling the object returns

    .. math::

        \sum_l \sum_j \frac{|W_{lj}|}{|R_{lj}| + \varepsilon},

    with the references :math:`R` held constant (no gradient flows into them). Small weights are
    pushed harder than large ones; right after :meth:`refresh` the value is close to the number
    of nonzero weights. Call :meth:`refresh` a few times during training (e.g. every few epochs).

    Args:
        params_or_module: a module (its weight matrices and kernels, see
            :func:`sparsifiable_parameters`), a tensor, or an iterable of tensors (all of them).
        eps: :math:`\varepsilon > 0`; a weight that is zero at the reference is penalised with factor
            :math:`1/\varepsilon`.
        reduction: ``"sum"`` as above, ``"mean"`` to divide by the number of entries.

    Attributes:
        params: the penalised tensors.
        references: the reference magnitudes :math:`|R_l|`, one tensor per parameter; the
            snapshot at construction until :meth:`refresh` or :meth:`load_state_dict`.

    Example:
        >>> w = torch.tensor([[2.0, 0.0], [-0.5, 1.0]], requires_grad=True)
        >>> penalty = ReweightedL1([w], eps=0.5)
        >>> penalty()  # 2/2.5 + 0/0.5 + 0.5/1 + 1/1.5
        tensor(1.9667, grad_fn=<SumBackward0>)
    """

    def __init__(
        self,
        params_or_module: nn.Module | Tensor | Iterable[Tensor],
        *,
        eps: float = 1e-6,
        reduction: Reduction = "sum",
    ) -> None:
        self.eps = check_real("eps", eps, minimum=0.0, strict=True)
        self.reduction = check_choice("reduction", reduction, ["sum", "mean"])
        self.params = _select("ReweightedL1", params_or_module)
        self.references: list[Tensor] = []
        self.refresh()

    def refresh(self) -> None:
        """Take the current magnitudes as the references, :math:`R \\leftarrow |W|`."""
        self.references = [p.detach().abs() for p in self.params]

    def __call__(self) -> Tensor:
        """The penalty for the current weights and references, a scalar with a gradient for the weights."""
        total = torch.stack([(p.abs() / (r + self.eps)).sum() for p, r in zip(self.params, self.references)]).sum()
        return _reduce(total, self.reduction, sum(p.numel() for p in self.params))

    def state_dict(self) -> dict[str, Any]:
        """The references, as ``{"references": [tensor, ...]}``."""
        return {"references": list(self.references)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the references from :meth:`state_dict`, onto each parameter's device and dtype.

        Raises:
            ValueError: the entry is missing, or the count, a shape or a value does not fit;
                nothing is changed then.
        """
        if not isinstance(state_dict, Mapping) or "references" not in state_dict:
            raise ValueError("state_dict has no 'references' entry: it was not saved by ReweightedL1.state_dict()")
        saved = state_dict["references"]
        if not isinstance(saved, Sequence) or isinstance(saved, (str, bytes)):
            raise ValueError(f"state_dict['references'] must be a list of tensors, got {type(saved).__name__}")
        if len(saved) != len(self.params):
            raise ValueError(
                f"state_dict holds {len(saved)} references, "
                f"but this ReweightedL1 penalises {len(self.params)} parameters"
            )
        references = []
        for index, (value, param) in enumerate(zip(saved, self.params)):
            if not isinstance(value, Tensor):
                raise ValueError(f"state_dict reference {index} must be a tensor, got {type(value).__name__}")
            if value.shape != param.shape:
                raise ValueError(
                    f"state_dict reference {index} has shape {tuple(value.shape)}, "
                    f"expected {tuple(param.shape)} (the shape of parameter {index})"
                )
            if not torch.isfinite(value).all():
                raise ValueError(f"state_dict reference {index} must be finite")
            references.append(value.detach().to(param.device, param.dtype, copy=True).abs_())
        self.references = references

    def __repr__(self) -> str:
        return f"ReweightedL1({len(self.params)} parameters, eps={self.eps}, reduction={self.reduction!r})"


def _group_norms(name: str, params_or_module: nn.Module | Tensor | Iterable[Tensor], structure: str) -> list[Tensor]:
    """Per tensor, the :math:`\\ell_2` norms of its groups: slices along dim 0 (``"row"``) or 1
    (``"column"``) of a tensor; a module's weights by their owners' layouts (see
    :func:`group_l2`). ``vector_norm``'s gradient at a zero group is zero (a subgradient), not
    NaN as that of ``sqrt(sum(w**2))``."""
    params = _select(name, params_or_module)
    owners = parameter_layouts(params_or_module) if isinstance(params_or_module, nn.Module) else {}
    norms = []
    for index, param in enumerate(params):
        layout = owners.get(id(param), (DENSE, ""))[0]
        axis = unit_axis(structure, layout)
        if param.dim() <= axis:
            raise ValueError(
                f"{name} with structure={structure!r} needs tensors with at least {axis + 1} dimension(s), "
                f"got params_or_module[{index}] of shape {tuple(param.shape)}"
            )
        norms.append(torch.linalg.vector_norm(units_first(param, axis, layout.groups), dim=1))
    return norms


def group_l2(
    params_or_module: nn.Module | Tensor | Iterable[Tensor],
    *,
    structure: Structure = "row",
    reduction: Reduction = "sum",
) -> Tensor:
    r"""Group lasso: the sum of the :math:`\ell_2` norms of the weight groups, :math:`\sum_l \sum_g \|W_{l,g}\|_2`.

    Yuan & Lin, *Model selection and estimation in regression with grouped variables*,
    J. R. Stat. Soc. B 2006; for neurons and channels, Scardapane, Comminiello, Hussain & Uncini,
    *Group sparse regularization for deep neural networks*, Neurocomputing 2017. It drives whole
    groups to zero, so that neurons or channels can be removed. The gradient at an all-zero group
    is zero (a subgradient), never NaN.

    Args:
        params_or_module: a module (its weight matrices and kernels, see
            :func:`sparsifiable_parameters`), a tensor, or an iterable of tensors (all of them).
        structure: ``"row"``: the slices along dim 0 (a Linear's output neuron, a conv's output
            channel; a 1-D tensor's entries); ``"column"``: the slices along dim 1 (a Linear's input
            neuron, a conv's input channel). In a module, each weight's output (``"row"``) or input
            (``"column"``) neurons and channels by the module that owns it: those of an
            ``nn.ConvTransposeNd`` weight ``(in, out / groups, *kernel)`` and of an ``nn.Embedding``
            table (a row is an input unit) lie along dims 1 and 0, and each group's channels along
            dim 1 of a grouped convolution are separate groups.
        reduction: ``"sum"`` as above, ``"mean"`` to divide by the number of groups.

    Example:
        >>> w = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
        >>> group_l2(w), group_l2(w, structure="column")
        (tensor(5.), tensor(7.))
    """
    check_choice("structure", structure, _STRUCTURES)
    check_choice("reduction", reduction, ["sum", "mean"])
    norms = _group_norms("group_l2", params_or_module, structure)
    total = torch.stack([n.sum() for n in norms]).sum()
    return _reduce(total, reduction, sum(n.numel() for n in norms))


def _growl_weights(weights: object) -> tuple[float, float] | Tensor:
    """``(beta1, beta2)`` checked, or the explicit weights as a checked float64 vector."""
    if isinstance(weights, tuple) and len(weights) == 2:
        return (
            check_real("weights[0] (beta1)", weights[0], minimum=0.0),
            check_real("weights[1] (beta2)", weights[1], minimum=0.0),
        )
    try:
        vector = torch.as_tensor(weights, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(
            f"weights must be a pair (beta1, beta2), a 1-D sequence of numbers or a tensor, got {weights!r}"
        ) from error
    if vector.dim() != 1 or vector.numel() == 0:
        raise ValueError(f"weights must be a non-empty 1-D sequence, got shape {tuple(vector.shape)}")
    values = vector.tolist()
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"weights must be finite, got {values}")
    if any(v < 0 for v in values):
        raise ValueError(f"weights must be non-negative, got {values}")
    for i in range(len(values) - 1):
        if values[i + 1] > values[i]:
            raise ValueError(
                f"weights must be nonincreasing, got {values} "
                f"(weights[{i + 1}]={values[i + 1]} > weights[{i}]={values[i]})"
            )
    return vector


def growl(
    params_or_module: nn.Module | Tensor | Iterable[Tensor],
    *,
    structure: Structure = "column",
    weights: tuple[float, float] | Sequence[float] | Tensor | None = None,
) -> Tensor:
    r"""GrOWL, the group ordered weighted :math:`\ell_1` norm, summed over the layers.

    Zhang, Wang, Figueiredo & Balzano, *Learning to share: simultaneous parameter tying and
    sparsification in deep learning*, ICLR 2018; the default weights are those of Hotegni,
    Peitz & Berkemeier, arXiv:2308.12243. Per layer, with its group norms sorted in decreasing
    order :math:`\|W_{[1]}\| \ge \|W_{[2]}\| \ge \dots \ge \|W_{[G]}\|`,

    .. math::

        \Omega_\lambda(W) = \sum_{i=1}^{G} \lambda_i \|W_{[i]}\|_2,
        \qquad \lambda_1 \ge \lambda_2 \ge \dots \ge 0 .

    Like :func:`group_l2` it zeroes whole groups; the larger weights on the larger norms also
    pull strongly correlated groups to equal norms (parameter tying). The gradient at an
    all-zero group is zero, never NaN.

    Args:
        params_or_module: a module (its weight matrices and kernels, see
            :func:`sparsifiable_parameters`), a tensor, or an iterable of tensors (all of them).
        structure: the groups, as in :func:`group_l2`; ``"column"`` (the default) groups the
            weights leaving one input neuron or channel.
        weights: a tuple ``(beta1, beta2)`` of non-negative numbers, for
            :math:`\lambda = (\beta_1 + \beta_2, \beta_2, \beta_2, \dots)`, i.e.
            :math:`\beta_1 \max_g \|W_g\| + \beta_2 \sum_g \|W_g\|`; or a nonincreasing,
            non-negative, finite 1-D list or tensor :math:`\lambda` with at least as many entries
            as the largest layer has groups (a layer with :math:`G` groups uses the first
            :math:`G`). ``None`` means ``(0.8, 0.2)``. Explicit weights are checked on the host
            and copied to the layers' device once per call (one transfer).

    Example:
        >>> w = torch.tensor([[3.0, 0.0], [4.0, 1.0]])  # column norms 5 and 1
        >>> growl(w), growl(w, weights=[2.0, 0.5])  # 0.8*5 + 0.2*(5+1), 2*5 + 0.5*1
        (tensor(5.2000), tensor(10.5000))
    """
    check_choice("structure", structure, _STRUCTURES)
    lam = _growl_weights((0.8, 0.2) if weights is None else weights)
    norms = _group_norms("growl", params_or_module, structure)
    if isinstance(lam, Tensor):  # to the layers' device and dtype once, not once per layer
        lam = lam.to(norms[0])
    terms = []
    for index, layer in enumerate(norms):
        if isinstance(lam, tuple):
            beta1, beta2 = lam
            terms.append(beta1 * layer.max() + beta2 * layer.sum() if layer.numel() else layer.sum())
            continue
        if layer.numel() > lam.numel():
            raise ValueError(
                f"weights has {lam.numel()} entries, but params_or_module[{index}] has {layer.numel()} "
                f"{structure} groups: give at least one weight per group"
            )
        ordered = torch.sort(layer, descending=True).values
        terms.append((lam[: layer.numel()].to(layer.dtype) * ordered).sum())
    return torch.stack(terms).sum()
