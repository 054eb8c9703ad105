"""MultiGradientDescent: the common descent direction of MGDA, written into ``.grad``."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer

from torch_moo._validation import Nonfinite
from torch_moo.base import rule_setting
from torch_moo.descent import JacobianDescent
from torch_moo.engine import HeadGradient
from torch_moo.functional.mgda import Normalization
from torch_moo.weightings.mgda import MGDA

__all__ = ["MultiGradientDescent"]


class MultiGradientDescent(JacobianDescent):
    r"""MGDA: descend along the min-norm element of the convex hull of the objectives' gradients.

    Désidéri, *Multiple-gradient descent algorithm (MGDA)* (2012); Sener & Koltun, *Multi-Task
    Learning as Multi-Objective Optimization* (NeurIPS 2018); the per-objective moments follow
    Reiners, Klamroth & Stiglmayr, *Efficient and Sparse Neural Networks by Pruning Weights in a
    Multiobjective Learning Approach* (2020). Each :meth:`backward` computes

    .. math::

        \alpha = \arg\min_{\alpha \in \Delta} \Big\| \sum_i \alpha_i \hat g_i \Big\|^2,
        \qquad d = \sum_i \alpha_i g_i ,

    exactly (:func:`~torch_moo.functional.min_norm_weights`; off the CPU on a host copy of the
    :math:`k \times k` matrix, one synchronisation per step), where
    :math:`g_i` is objective :math:`i`'s gradient over the *shared* parameters and
    :math:`\hat g_i` its normalisation (:func:`~torch_moo.functional.normalized_gram`), and
    writes :math:`d` into ``.grad``; the base optimizer then steps along it. With
    ``normalization="none"``, :math:`d` decreases every objective
    (:math:`\langle d, g_i \rangle \ge \|d\|^2`) and vanishes exactly at a Pareto-stationary
    point; :attr:`stationarity` reports :math:`\|d\|^2`.

    Two modes, chosen per call:

    * ``opt.backward(losses)``: the gradients over every parameter, one backward pass per
      objective (``torch.autograd.grad``). A parameter that two or more objectives reach is
      shared and gets :math:`d`; one that a single objective reaches (a task head) gets that
      objective's own gradient, as in MGDA (``heads="weighted"``: :math:`\alpha_i` times it);
      one that none reaches keeps its ``.grad``. A parameter listed twice counts once. Sparse
      gradients (``nn.Embedding(sparse=True)``) are densified, so ``.grad`` is dense: use a
      base that takes dense gradients (not :class:`torch.optim.SparseAdam`).
    * ``opt.backward(losses, features=z)``: MGDA-UB, the cheap mode. :math:`g_i` is the
      gradient with respect to the shared representation ``z``, and one backward pass of
      :math:`\sum_i L_i` runs with its gradient at ``z`` replaced by
      :math:`\sum_i \alpha_i \partial L_i / \partial z` (a tensor hook): the trunk receives
      the MGDA combination and each head its own gradient. Sener & Koltun show that
      :math:`\alpha` then minimises an upper bound of the shared-parameter problem. With
      separate heads the :math:`g_i` are recorded during that same pass, by hooks on the
      nodes that read ``z``; with a node after ``z`` that serves several objectives, or
      several feature tensors, one backward through the heads per objective comes first.
      Every objective must depend on ``z``.

    ``moments=(beta1, beta2)`` keeps Adam's moment estimates for every objective separately
    (the multi-objective Adam of Reiners et al.) and runs MGDA on the objectives' Adam
    directions :math:`u_i = \hat m_i / (\sqrt{\hat v_i} + 10^{-8})` instead of their raw
    gradients, so ``.grad`` holds :math:`\sum_i \alpha_i u_i` (:math:`u_i` for a parameter only
    objective :math:`i` reaches). Pair it with ``base=torch.optim.SGD`` (no momentum), which then
    steps by ``lr`` times that direction: Adam as the base would precondition twice. It costs
    two extra copies of the parameters per objective, is available in the full mode only, and
    takes one :meth:`backward` per :meth:`step`.

    Under :mod:`torch.distributed` every rank computes the same :math:`\alpha` and step, equal
    to single-process MGDA on the concatenated batch. The full mode takes its gradients with
    ``torch.autograd.grad``, which ``DistributedDataParallel``'s reducer does not see: call it
    under ``model.no_sync()`` (or on the unwrapped module); it averages the per-objective
    gradients itself (one all-reduce of :math:`k` times the shared parameters). The
    representation mode all-reduces the :math:`k \times k` Gram matrix, and its final backward
    is an ordinary one, which DDP averages as usual.

    Args:
        params: parameters or parameter groups.
        num_objectives: number of objectives :math:`k`.
        normalization: how the gradients are scaled for choosing :math:`\alpha` only:
            ``"none"``, ``"l2"`` (by :math:`\|g_i\|`), ``"loss"`` (by :math:`L_i`) or
            ``"loss+"`` (by :math:`L_i \|g_i\|`); the last two need positive losses.
        moments: ``(beta1, beta2)`` for per-objective Adam moments, or ``None``.
        heads: what a parameter that one objective alone reaches (a task head) receives:
            ``"own"`` (default), that objective's gradient :math:`g_i`, the update of
            Algorithm 2 of Sener & Koltun, which keeps each head's step independent of how
            much weight its task gets in the shared direction; or ``"weighted"``,
            :math:`\alpha_i g_i`, as their code does (it back-propagates
            :math:`\sum_i \alpha_i L_i`), which slows the heads of tasks with small weight.
        trunk: the module holding the shared parameters: the full mode then takes the Gramian path
            where it is cheaper (see :class:`~torch_moo.JacobianDescent`).
        nonfinite, base, base_kwargs: see :class:`~torch_moo.MultiObjectiveOptimizer`.

    It is a :class:`~torch_moo.JacobianDescent` with the rule :class:`~torch_moo.weightings.MGDA`
    (:attr:`weighting`); the per-objective moments are per-parameter optimizer state
    (``opt.state[p]["objective_exp_avg"]``, ...).

    Example:
        >>> trunk, heads = torch.nn.Linear(4, 8), torch.nn.ModuleList(torch.nn.Linear(8, 1) for _ in range(2))
        >>> params = [*trunk.parameters(), *heads.parameters()]
        >>> opt = MultiGradientDescent(params, num_objectives=2, lr=1e-2)
        >>> x, y = torch.randn(32, 4), torch.randn(32, 2)
        >>> for _ in range(3):
        ...     opt.zero_grad()
        ...     z = trunk(x).relu()
        ...     losses = torch.stack([(head(z).squeeze(1) - y[:, i]).pow(2).mean() for i, head in enumerate(heads)])
        ...     alpha = opt.backward(losses, features=z)
        ...     opt.step()
        >>> alpha.shape, bool(torch.isclose(alpha.sum(), torch.tensor(1.0)))
        (torch.Size([2]), True)
    """

    weighting: MGDA

    def __init__(
        self,
        params: Any,
        *,
        num_objectives: int,
        normalization: Normalization = "none",
        moments: tuple[float, float] | None = None,
        heads: HeadGradient = "own",
        trunk: nn.Module | None = None,
        nonfinite: Nonfinite = "raise",
        base: type[Optimizer] | Optimizer | None = None,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(
            params,
            num_objectives=num_objectives,
            weighting=MGDA(normalization),
            heads=heads,
            moments=moments,
            trunk=trunk,
            nonfinite=nonfinite,
            base=base,
            **base_kwargs,
        )

    normalization = rule_setting("normalization", "How the gradients are scaled for choosing :math:`\\alpha`.")

    @property
    def gap(self) -> Tensor:
        """The min-norm solver's duality gap at the last :meth:`backward` (0 at the exact solution),
        for the normalised Gram matrix; a float64 scalar, as :attr:`stationarity`."""
        return self.weighting.gap.clone()

    def _combine(self, losses, values, *, features, scaler, retain_graph):
        if self.normalization in ("loss", "loss+") and self._checks_finite and not bool((values > 0).all()):
            raise ValueError(f"normalization={self.normalization!r} needs positive losses, got {values.tolist()}")
        return super()._combine(losses, values, features=features, scaler=scaler, retain_graph=retain_graph)

    def _settings(self) -> dict[str, Any]:
        return {**self.weighting.config(), **self._mode()}
