"""Every Python code block of README.md and docs/*.rst runs and meets its stated outcome.

The blocks are extracted from the files (README: ```` ```python ````; rst: ``code-block``,
``code``, ``sourcecode`` and ``testcode`` directives and ``::`` literal blocks, kept when they
parse as Python), so a block added to the docs fails :func:`test_snippet_meets_its_outcome`
until :data:`OUTCOMES` says what it must achieve. Each outcome runs the block in a namespace
that supplies the names it uses (``model``, ``loader``, ``ce``, ``epochs`` ...: a small two-head
CNN on :class:`torch_moo.datasets.TwoDigits`) and checks what the surrounding text promises.
"""

from __future__ import annotations

import ast
import functools
import re
import textwrap
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn.functional import cross_entropy

import torch_moo as tm
from tests.helpers import free_port
from torch_moo.datasets import TwoDigits, TwoHeadCNN

ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------ extraction
_FENCE = re.compile(r"^```(?:python|py)\s*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_DIRECTIVE = re.compile(r"^(\s*)\.\. (?:code-block|code|sourcecode|testcode)::\s*(\S*)\s*$")
_NOT_PYTHON = {"bash", "sh", "shell", "console", "text", "none", "ini", "toml", "yaml", "json"}


@dataclass(frozen=True)
class Snippet:
    source: str  # path relative to the repository root
    index: int  # 1-based among the file's Python blocks
    line: int  # line of the directive or fence
    code: str

    @property
    def id(self) -> str:
        return f"{self.source}#{self.index}"


def _indented_body(lines: list[str], start: int, base: int) -> tuple[str, int]:
    """The block indented deeper than ``base`` from line ``start`` on (directive options
    skipped), dedented; and the index of the first line after it."""
    i = start
    while i < len(lines) and lines[i].strip().startswith(":") and len(lines[i]) - len(lines[i].lstrip()) > base:
        i += 1  # directive options such as :caption:
    body = []
    while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > base):
        body.append(lines[i])
        i += 1
    return textwrap.dedent("\n".join(body)).strip("\n"), i


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except SyntaxError:
        return False
    return True


def rst_blocks(text: str) -> list[tuple[int, str]]:
    """``(line, code)`` of every Python block of an rst text: code directives whose language
    is Python or unnamed, and ``::`` literal blocks, each kept only if it parses as Python."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = _DIRECTIVE.match(lines[i])
        literal = lines[i].rstrip().endswith("::") and not lines[i].lstrip().startswith("..")
        if match or literal:
            base = len(lines[i]) - len(lines[i].lstrip())
            code, end = _indented_body(lines, i + 1, base)
            language = match.group(2).lower() if match else ""
            if code and language not in _NOT_PYTHON and _parses(code):
                blocks.append((i + 1, code))
            i = end
        else:
            i += 1
    return blocks


def markdown_blocks(text: str) -> list[tuple[int, str]]:
    return [(text.count("\n", 0, m.start()) + 1, m.group(1).rstrip("\n")) for m in _FENCE.finditer(text)]


def collect() -> list[Snippet]:
    snippets = []
    sources = [("README.md", markdown_blocks)] + [
        (str(path.relative_to(ROOT)), rst_blocks) for path in sorted((ROOT / "docs").glob("*.rst"))
    ]
    for source, extract in sources:
        for index, (line, code) in enumerate(extract((ROOT / source).read_text()), start=1):
            snippets.append(Snippet(source, index, line, code))
    return snippets


SNIPPETS = collect()


def run(code: str, namespace: dict, name: str = "<snippet>") -> dict:
    """Execute ``code`` in ``namespace`` (with ``torch``, ``tm`` and ``ce`` supplied) and return it."""
    namespace = {"torch": torch, "tm": tm, "ce": cross_entropy, **namespace}
    exec(compile(code, name, "exec"), namespace)
    return namespace


# -------------------------------------------------------------------------------- fixtures
class TwoHeads(nn.Module):
    """A small MLP trunk and one linear head per digit (``heads``, also ``left`` and ``right``) on
    the 16x16 two-digit canvas."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(256, 128), nn.ReLU())
        self.heads = nn.ModuleList([nn.Linear(128, 10), nn.Linear(128, 10)])

    @property
    def left(self) -> nn.Module:
        return self.heads[0]

    @property
    def right(self) -> nn.Module:
        return self.heads[1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.trunk(x)
        return self.left(z), self.right(z)


@functools.cache
def digits(train: bool, size: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return TwoDigits(train=train, size=size, seed=0).tensors()


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 64 training images the small snippets train on."""
    return digits(True, 64)


class Batches:
    """A re-iterable loader of ``(x, y1, y2)`` batches, reshuffled each pass (a DataLoader
    without its per-sample overhead); ``single=True`` yields ``(x, y1)``. ``size=None``: all
    20,000 training images; ``repeat``: :func:`batch` that many times per pass, for the loops
    that need only show that they fit what they see."""

    def __init__(
        self, size: int | None = None, batch_size: int = 128, *, seed: int = 0, repeat: int = 0, single: bool = False
    ) -> None:
        self.tensors = tuple(t.repeat(repeat, *[1] * (t.dim() - 1)) for t in batch()) if repeat else digits(True, size)
        self.batch_size = 64 if repeat else batch_size
        self.single = single
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.tensors[1]) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        x, y1, y2 = self.tensors
        for index in torch.randperm(len(y1), generator=self.generator).split(self.batch_size):
            yield (x[index], y1[index]) if self.single else (x[index], y1[index], y2[index])


def fit(model: nn.Module) -> torch.Tensor:
    """Both tasks' cross-entropy on :func:`batch`."""
    x, y1, y2 = batch()
    with torch.no_grad():
        out1, out2 = model(x)
        return torch.stack([cross_entropy(out1, y1), cross_entropy(out2, y2)])


def assert_fitted(before: torch.Tensor, model: nn.Module, preference: list[float] | None = None) -> None:
    """Both losses on :func:`batch` fell by 10% or more (from about ln 10 = 2.30); with a
    Chebyshev ``preference`` :math:`k`, :math:`\\max_i k_i f_i` did, the quantity it minimises.
    Adam at lr 1e-3 on the summed losses takes 20 steps for 13-15% and 40 for 30%; the loops run 30."""
    after = fit(model)
    message = f"losses on the training batch {before.tolist()} -> {after.tolist()}"
    if preference is None:
        assert (after < 0.9 * before).all(), message
    else:
        k = torch.tensor(preference)
        assert (k * after).max() < 0.9 * (k * before).max(), message


def assert_trains(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 30) -> None:
    """``steps`` protocol steps on :func:`batch` fit it (:func:`assert_fitted`)."""
    before = fit(model)
    for _ in range(steps):
        opt.zero_grad()
        opt.backward(task_losses(model))
        opt.step()
    assert_fitted(before, model)


def assert_each_fits(variants: list[str]) -> None:
    """Each variant of a training loop, run from the same fresh model on :func:`batch` repeated, fits it."""
    for variant in variants:
        torch.manual_seed(0)
        model = TwoHeads()
        before = fit(model)
        run(variant, {"model": model, "loader": Batches(repeat=30)})
        assert_fitted(before, model)


def batch_of(model: nn.Module) -> dict:
    """:func:`batch` through ``model``: ``x``, ``y1``, ``y2``, ``out1``, ``out2``."""
    x, y1, y2 = batch()
    out1, out2 = model(x)
    return {"x": x, "y1": y1, "y2": y2, "out1": out1, "out2": out2}


def task_losses(model: nn.Module) -> torch.Tensor:
    b = batch_of(model)
    return torch.stack([cross_entropy(b["out1"], b["y1"]), cross_entropy(b["out2"], b["y2"])])


# -------------------------------------------------------------------------------- outcomes
Check = Callable[[str, Path, pytest.MonkeyPatch], None]


@dataclass(frozen=True)
class Outcome:
    anchor: str  # text the block must contain: a moved or rewritten block is caught, not misjudged
    check: Check
    marks: tuple[pytest.MarkDecorator, ...] = ()


OUTCOMES: dict[str, Outcome] = {}


def outcome(snippet_id: str, anchor: str, *marks: pytest.MarkDecorator) -> Callable[[Check], Check]:
    def register(check: Check) -> Check:
        OUTCOMES[snippet_id] = Outcome(anchor, check, marks)
        return check

    return register


README_EPOCHS = 3
README_TOLERANCE = 0.05  # the requirement: within 0.05 of plain Adam's held-out accuracy


@functools.cache
def readme_run(code: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out accuracy (left, right) after ``README_EPOCHS`` epochs of the block and of plain
    Adam on the summed losses in the same loop: the quickstart's CNN, all 20,000 TwoDigits
    training images in batches of 128, the same initial weights and batch order."""
    test = digits(False, None)

    def model_and_loader() -> tuple[nn.Module, Batches]:
        torch.manual_seed(seed)
        return TwoHeadCNN(), Batches(seed=seed)

    model, loader = model_and_loader()
    run(code, {"model": model, "loader": loader, "epochs": README_EPOCHS}, "<README block>")
    ours = accuracies(model, test)

    model, loader = model_and_loader()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=README_EPOCHS)
    for _ in range(README_EPOCHS):
        for x, y1, y2 in loader:
            opt.zero_grad()
            out1, out2 = model(x)
            (cross_entropy(out1, y1) + cross_entropy(out2, y2)).backward()
            opt.step()
        sched.step()
    return ours, accuracies(model, test)


def accuracies(model: nn.Module, test: tuple[torch.Tensor, ...]) -> torch.Tensor:
    x, y1, y2 = test
    with torch.no_grad():
        out1, out2 = model(x)
    return torch.stack([(out1.argmax(1) == y1).float().mean(), (out2.argmax(1) == y2).float().mean()])


def check_readme(code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours, adam = readme_run(code)
    assert (adam > 0.75).all(), f"the plain Adam reference did not train: {adam.tolist()}"
    assert (ours >= adam - README_TOLERANCE).all(), f"README block {ours.tolist()} against plain Adam {adam.tolist()}"


outcome("README.md#1", "tm.ChebyshevALM(model.parameters(), num_objectives=3", pytest.mark.slow)(check_readme)


@outcome(
    "docs/index.rst#1", "tm.ChebyshevALM(model.parameters(), num_objectives=3", pytest.mark.slow
)  # the README's run
def _(code, tmp_path, monkeypatch):
    readme = next(s.code for s in SNIPPETS if s.id == "README.md#1")
    assert code == readme, "the docs' front page shows the README's example: keep the two identical"
    check_readme(code, tmp_path, monkeypatch)


@outcome("docs/mgda.rst#1", anchor="tm.MultiGradientDescent(model.parameters(), num_objectives=2")
def _(code, tmp_path, monkeypatch):
    representation = code.replace("opt.backward(losses)  ", "opt.backward(losses, features=z)  ", 1)
    assert representation != code
    assert_each_fits([code, representation])  # the full mode, then the commented representation mode


@outcome("docs/weightings.rst#1", anchor="weighting=UPGrad(), lr=1e-3)")
def _(code, tmp_path, monkeypatch):
    loss_space = code.replace("# opt = tm.WeightedLossDescent", "opt = tm.WeightedLossDescent", 1)
    representation = code.replace("opt.backward(losses)  ", "opt.backward(losses, features=z)  ", 1)
    assert code != loss_space and code != representation
    assert_each_fits([code, loss_space, representation])  # UPGrad (full mode), uncertainty weighting, UPGrad on z


@outcome("docs/continuation.rst#1", anchor="points = continue_front(models, lambda m: loss_vector(m, batch)")
def _(code, tmp_path, monkeypatch):
    # two starts trained briefly on different weighted sums; the paths stay within the budget and
    # every accepted point is as stationary as the rule requires (tol, or its start's residual)
    models = []
    for weight in (0.3, 0.7):
        torch.manual_seed(0)
        model = TwoHeads()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(20):
            opt.zero_grad()
            (torch.tensor([weight, 1 - weight]) @ task_losses(model)).backward()
            opt.step()
        models.append(model)
    before = [fit(model) for model in models]
    namespace = run(code, {"models": models, "loss_vector": lambda m, b: task_losses(m), "batch": None})
    points = namespace["points"]
    assert points and sum(p.cost for p in points) <= 3000
    assert any(p.accepted for p in points)
    assert all(torch.equal(fit(model), b) for model, b in zip(models, before))  # the starts are left unchanged


@outcome("docs/objectives.rst#1", anchor='tm.objectives.l1(model, reduction="mean")')
def _(code, tmp_path, monkeypatch):
    model = TwoHeads()
    opt = tm.ChebyshevALM(model.parameters(), num_objectives=3, preference=[0.2, 0.4, 0.4], lr=1e-3)
    ns = run(code, {"model": model, "opt": opt, **batch_of(model)})
    weights = tm.objectives.sparsifiable_parameters(model)
    mean_abs = torch.cat([w.detach().abs().flatten() for w in weights]).mean()
    torch.testing.assert_close(ns["losses"][0].detach(), mean_abs)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@outcome("docs/objectives.rst#2", anchor="reweighted = tm.objectives.ReweightedL1(model")
def _(code, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = TwoHeads()
    before = fit(model)
    opt = tm.ChebyshevALM(model.parameters(), num_objectives=3, preference=[0.2, 0.4, 0.4], lr=1e-3)
    ns = run(code, {"model": model, "opt": opt, "loader": Batches(repeat=6), "epochs": 5})
    assert_fitted(before, model)
    # refresh() ran after the fifth epoch, the last: the references are the final magnitudes
    for weight, reference in zip(
        tm.objectives.sparsifiable_parameters(model), ns["reweighted"].references, strict=True
    ):
        assert torch.equal(reference, weight.detach().abs())
    assert ns["losses"].shape == (3,) and torch.isfinite(ns["losses"]).all()


@outcome("docs/pareto.rst#1", anchor="front = sweep(chebyshev, simplex_lattice(2, 4)[1:-1])")
def _(code, tmp_path, monkeypatch):
    front = run(code, {})["front"]
    f1, f2 = front.values.double().unbind(1)
    assert front.non_dominated.all() and len(f1) == 3
    # on the front sqrt(f1) + sqrt(f2) = sqrt(5); at the Chebyshev solution k1 f1 = k2 f2
    torch.testing.assert_close(f1.sqrt() + f2.sqrt(), torch.full_like(f1, 5**0.5), atol=1e-2, rtol=0)
    k = front.preferences.double()
    torch.testing.assert_close(k[:, 0] * f1, k[:, 1] * f2, rtol=0.05, atol=1e-3)


@outcome("docs/pareto.rst#2", anchor="weighted_sum_knee_search(weighted_sum")
def _(code, tmp_path, monkeypatch):
    from torch_moo.pareto import weighted_sum_knee_search

    targets = torch.tensor([[0.0, 0.0], [2.0, 1.0]])  # defined by the page's first block
    ns = run(code, {"targets": targets, "weighted_sum_knee_search": weighted_sum_knee_search})
    front, knee = ns["front"], ns["knee"]
    # as the comment says: near (1.25, 1.25), at weights near (1/2, 1/2)
    torch.testing.assert_close(
        front.values[knee].double(), torch.tensor([1.25, 1.25], dtype=torch.float64), atol=0.1, rtol=0
    )
    torch.testing.assert_close(
        front.preferences[knee].double(), torch.tensor([0.5, 0.5], dtype=torch.float64), atol=0.1, rtol=0
    )


@outcome("docs/pareto.rst#3", anchor="plot_front(front, reference=[6.0, 6.0], knee=knee)")
def _(code, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from torch_moo.pareto import Front, plot_front

    monkeypatch.chdir(tmp_path)
    front = Front([[0.2, 0.8], [0.5, 0.5], [0.8, 0.2]], [[0.2, 3.2], [1.25, 1.25], [3.2, 0.2]], [None] * 3)
    run(code, {"front": front, "knee": 1, "plot_front": plot_front})
    assert (tmp_path / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@outcome("docs/protocol.rst#1", anchor="weights = opt.backward(losses)")
def _(code, tmp_path, monkeypatch):
    model = TwoHeads()
    opt = tm.ChebyshevALM(model.parameters(), num_objectives=3, preference=[0.2, 0.4, 0.4], lr=1e-3)
    start = [p.detach().clone() for p in model.parameters()]
    loss_1, loss_2 = task_losses(model)
    ns = run(code, {"opt": opt, "loss_0": tm.objectives.l1(model), "loss_1": loss_1, "loss_2": loss_2})
    torch.testing.assert_close(ns["weights"].sum(), torch.tensor(1.0))
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), start))  # one step of every parameter


@outcome("docs/protocol.rst#2", anchor="tm.MultiGradientDescent(adam, num_objectives=2)")
def _(code, tmp_path, monkeypatch):
    model = TwoHeads()
    ns = run(code, {"model": model})
    opt, adam = ns["opt"], ns["adam"]
    assert opt.base is adam and opt.param_groups is adam.param_groups and opt.state is adam.state
    assert_trains(model, opt)


@outcome("docs/protocol.rst#3", anchor="METHODS = {")
def _(code, tmp_path, monkeypatch):
    expected = {"sum": tm.FixedWeighting, "mgda": tm.MultiGradientDescent, "minmax": tm.MinMaxWeighting}
    for method, cls in expected.items():
        model = TwoHeads()
        opt = run(code, {"model": model, "config": SimpleNamespace(method=method)})["opt"]
        assert type(opt) is cls and opt.param_groups[0]["lr"] == 1e-3
        assert_trains(model, opt)


@outcome("docs/protocol.rst#4", anchor="OneCycleLR(opt, max_lr=1e-2, total_steps=steps)")
def _(code, tmp_path, monkeypatch):
    model = TwoHeads()
    ns = run(code, {"model": model, "steps": 20})
    opt, sched = ns["opt"], ns["sched"]
    rates = []
    for _ in range(20):
        rates.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        opt.backward(task_losses(model))
        opt.step()
        sched.step()
    # OneCycleLR starts at max_lr / 25 and reaches max_lr after 30% of the steps
    assert rates[0] == pytest.approx(1e-2 / 25) and max(rates) == pytest.approx(1e-2, rel=0.05)


@outcome("docs/protocol.rst#5", anchor="clip_grad_norm_(model.parameters(), max_norm=1.0)")
def _(code, tmp_path, monkeypatch):
    model = TwoHeads()
    opt = tm.ChebyshevALM(model.parameters(), num_objectives=2, preference=[0.5, 0.5], lr=1e-3)
    losses = 1e3 * task_losses(model)  # gradients far above norm 1
    run(code, {"opt": opt, "model": model, "losses": losses})
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    torch.testing.assert_close(norm, torch.tensor(1.0), rtol=1e-5, atol=0)


@outcome("docs/protocol.rst#6", anchor='scaler = torch.amp.GradScaler("cuda")')
def _(code, tmp_path, monkeypatch):
    model = TwoHeads()
    before = fit(model)
    opt = tm.ChebyshevALM(model.parameters(), num_objectives=3, preference=[0.2, 0.4, 0.4], lr=1e-3)
    with warnings.catch_warnings():  # without CUDA: "Disabling" warnings, then float32 steps
        warnings.filterwarnings("ignore", message=".*(CUDA is not available|Disabling)")
        ns = run(code, {"model": model, "opt": opt, "loader": Batches(repeat=30)})
    assert ns["scaler"].is_enabled() == torch.cuda.is_available()
    assert_fitted(before, model)


@outcome("docs/protocol.rst#7", "torch.nn.parallel.DistributedDataParallel(net)", pytest.mark.distributed)
def _(code, tmp_path, monkeypatch):
    import torch.distributed as dist

    net = TwoHeads()
    before = fit(net)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ns = run(code, {"net": net, "loader": Batches(repeat=30)})
    finally:
        dist.destroy_process_group()
    assert isinstance(ns["model"], nn.parallel.DistributedDataParallel) and ns["model"].module is net
    assert_fitted(before, net, preference=[0.3, 0.7])


@outcome("docs/protocol.rst#8", anchor='torch.load("checkpoint.pt", weights_only=True)')
def _(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def build() -> tuple[nn.Module, tm.ChebyshevALM]:
        model = TwoHeads()
        return model, tm.ChebyshevALM(
            model.parameters(), num_objectives=2, preference=[0.3, 0.7], outer_every=1, lr=1e-3
        )

    model, opt = build()
    for _ in range(2):
        opt.zero_grad()
        opt.backward(task_losses(model))
        opt.step()
    run(code, {"model": model, "opt": opt})  # saves, then loads into the same objects
    fresh_model, fresh = build()
    run(code.split("\n\n", 1)[1], {"model": fresh_model, "opt": fresh})  # the loading half, into fresh objects
    assert all(torch.equal(v, w) for v, w in zip(fresh_model.state_dict().values(), model.state_dict().values()))
    assert torch.equal(fresh.multipliers, opt.multipliers) and not torch.equal(opt.multipliers, torch.full((2,), 0.5))
    for a, b in zip(fresh.state.values(), opt.state.values(), strict=True):
        assert all(torch.equal(a[key], b[key]) for key in b)  # Adam's moments and step counts


@outcome("docs/protocol.rst#9", anchor="class MultiTask(L.LightningModule)")
def _(code, tmp_path, monkeypatch):
    L = pytest.importorskip("lightning")
    from torch.utils.data import DataLoader, TensorDataset

    ns = run(code, {})
    module = ns["MultiTask"](TwoHeads())
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=4,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers|log_every_n_steps)")
        trainer.fit(module, DataLoader(TensorDataset(*batch()), batch_size=16))
    opt = trainer.optimizers[0]
    assert trainer.global_step == 8  # Lightning counted every step
    assert not torch.equal(opt.multipliers, torch.full((2,), 0.5))  # outer_step() ran at the epoch ends
    assert opt.param_groups[0]["lr"] < 1e-3  # the cosine schedule stepped


@outcome("docs/protocol.rst#10", anchor='nonfinite="skip"')
def _(code, tmp_path, monkeypatch):
    model = TwoHeads()
    calls = []

    def losses_of(model, x, y1, y2):  # every third batch has a NaN loss
        out1, out2 = model(x)
        calls.append(len(calls))
        losses = torch.stack([cross_entropy(out1, y1), cross_entropy(out2, y2)])
        return losses * float("nan") if len(calls) % 3 == 0 else losses

    before = fit(model)
    ns = run(code, {"model": model, "loader": Batches(repeat=45), "losses_of": losses_of, "skipped": 0})
    assert ns["skipped"] == len(calls) // 3 == 15
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert_fitted(before, model)  # from the 30 steps with finite losses


@outcome("docs/protocol.rst#11", anchor="model = torch.compile(net)")
def _(code, tmp_path, monkeypatch):
    net = TwoHeads()
    ns = run(code, {"net": net})
    assert isinstance(ns["model"], torch._dynamo.eval_frame.OptimizedModule) and ns["model"]._orig_mod is net
    assert isinstance(ns["opt"], tm.MinMaxWeighting)
    assert ns["sparse"].sparsity() == pytest.approx(0.9, abs=1e-3)
    assert all(torch.equal(net.get_parameter(name) != 0, mask) for name, mask in ns["sparse"].masks.items())


@outcome("docs/protocol.rst#12", anchor="net.trunk = torch.compile(net.trunk)")
def _(code, tmp_path, monkeypatch):
    net = TwoHeads()
    parameters = list(net.parameters())
    run(code, {"net": net})
    compiled = torch._dynamo.eval_frame.OptimizedModule
    assert isinstance(net.trunk, compiled) and all(isinstance(head, compiled) for head in net.heads)
    assert all(p is q for p, q in zip(net.parameters(), parameters, strict=True))  # the same parameters


@outcome("docs/sparsity.rst#1", anchor="preference=[0.7, 0.15, 0.15]")
def _(code, tmp_path, monkeypatch):
    model = TwoHeads()
    start = [p.detach().clone() for p in model.parameters()]
    ns = run(code, {"model": model, **batch_of(model)})
    torch.testing.assert_close(ns["opt"].preference, torch.tensor([0.7, 0.15, 0.15]))
    assert ns["losses"].shape == (3,)
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), start))  # one step taken


@outcome("docs/sparsity.rst#2", anchor="w.masked_fill_(w.abs() < 1e-3, 0)")
def _(code, tmp_path, monkeypatch):
    model = TwoHeads()
    with torch.no_grad():
        for w in tm.objectives.sparsifiable_parameters(model):
            w.copy_(torch.where(torch.rand_like(w) < 0.5, 5e-4, w))  # about half below the threshold
    below = [(w.abs() < 1e-3).clone() for w in tm.objectives.sparsifiable_parameters(model)]
    run(code, {"model": model})
    for w, small in zip(tm.objectives.sparsifiable_parameters(model), below, strict=True):
        assert torch.equal(w == 0, small) and small.any()


@outcome("docs/sparsity.rst#3", anchor="tm.SparsityController(opt, model=model, sparsity=0.0, threshold=1e-3)")
def _(code, tmp_path, monkeypatch):
    model = TwoHeads()
    ns = run(code, {"model": model})
    opt, sparse = ns["opt"], ns["sparse"]
    opt.zero_grad()
    opt.backward(torch.cat([tm.objectives.l1(model).unsqueeze(0), task_losses(model)]))
    opt.step()
    weights = [model.get_parameter(name) for name in sparse.masks]
    assert all(((w.abs() > 1e-3) | (w == 0)).all() for w in weights)  # |w| <= 1e-3 is exactly zero
    assert sparse.sparsity() > 0.01  # PyTorch's initialisation puts about 2% of these weights below 1e-3


@outcome("docs/sparsity_controller.rst#1", anchor="tm.SparsityController(opt, model=model, sparsity=0.9")
def _(code, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))
    x, y, _ = batch()
    before = cross_entropy(model(x), y).detach()
    loader = Batches(repeat=60, single=True)
    ns = run(code, {"model": model, "loader": loader, "loss_fn": cross_entropy, "total_steps": len(loader)})
    sparse = ns["sparse"]
    assert sparse.sparsity() == pytest.approx(0.9, abs=1e-3)
    assert all(torch.equal(model.get_parameter(name) != 0, mask) for name, mask in sparse.masks.items())
    assert cross_entropy(model(x), y) < 0.9 * before


@outcome("docs/tangent.rst#1", anchor="tm.ParetoTangentExplorer(model.parameters(), num_objectives=2")
def _(code, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    inputs = torch.randn(32, 4)
    targets = inputs @ torch.randn(4, 2) + 0.1 * torch.randn(32, 2)
    history = []

    def losses_of(model):  # two least-squares fits of one output, to two different targets
        losses = (model(inputs) - targets).square().mean(0)
        history.append(losses.detach())
        return losses

    ns = run(code, {"model": model, "steps": 300, "losses_of": losses_of})
    reached, final = history[299], losses_of(model).detach()  # after the MGDA steps, after exploring
    # beta = (1, 0) trades toward the first objective along the Pareto set: f1 falls, f2 rises
    assert final[0] < 0.9 * reached[0] and final[1] > reached[1]
    assert ns["opt"].tangent_residual < 1e-4


def torchrun_environment(monkeypatch) -> None:
    """What torchrun sets, for a world of one rank."""
    environment = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1"}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)


@outcome(
    "docs/training_stacks.rst#1", "tm.SparsityController(opt, model=model.module, sparsity=0.8", pytest.mark.distributed
)
def _(code, tmp_path, monkeypatch):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    torchrun_environment(monkeypatch)
    model = TwoHeads()
    before = fit(model)
    dataset = TensorDataset(*Batches(repeat=15).tensors)
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, seed=0)
    names = {
        "dist": dist,
        "DistributedDataParallel": DistributedDataParallel,
        "model": model,
        "device": torch.device("cpu"),
        "epochs": 2,
        "sampler": sampler,
        "loader": DataLoader(dataset, batch_size=64, sampler=sampler),
    }
    try:
        ns = run(code, names)
    finally:
        dist.destroy_process_group()
    assert ns["sparse"].sparsity() == pytest.approx(0.8, abs=1e-3)
    assert_fitted(before, model)


@outcome(
    "docs/training_stacks.rst#2", 'checkpoint = {"train": TrainingState(model, opt, sparse)}', pytest.mark.distributed
)
def _(code, tmp_path, monkeypatch):
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import DTensor

    from torch_moo.checkpoint import TrainingState

    monkeypatch.chdir(tmp_path)  # the block writes checkpoints/epoch<e>
    torchrun_environment(monkeypatch)  # a world of one: FSDP2 on a one-rank mesh
    torch.manual_seed(0)
    model = TwoHeads()
    before = fit(model)
    try:
        ns = run(code, {"dist": dist, "model": model, "loader": Batches(repeat=15), "epochs": 2})
        assert all(isinstance(p, DTensor) for p in model.parameters())
        assert ns["sparse"].sparsity() == pytest.approx(0.8, abs=1e-3)
        assert_fitted(before, model)
        trained = [p.full_tensor().detach().clone() for p in model.parameters()]
    finally:
        dist.destroy_process_group()
    # the last checkpoint loads into a plain model (no process group: the pieces read whole)
    plain = TwoHeads()
    opt = tm.MultiGradientDescent(plain.parameters(), num_objectives=2, lr=5e-3)
    sparse = tm.SparsityController(opt, model=plain, sparsity=0.8, regrow="exploration", update_every=10)
    with pytest.warns(UserWarning, match="single process"):
        dcp.load({"train": TrainingState(plain, opt, sparse)}, checkpoint_id="checkpoints/epoch2")
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), trained, strict=True))
    assert sparse.sparsity() == pytest.approx(0.8, abs=1e-3)


@outcome("docs/porting.rst#1", anchor='normalization="loss+", heads="weighted"')
def _(code, tmp_path, monkeypatch):
    model = TwoHeads()
    before = fit(model)
    ns = run(code, {"model": model, "loader": Batches(repeat=30), "epochs": 2})
    opt = ns["opt"]
    assert opt.heads == "weighted" and opt.normalization == "loss+" and opt.base is ns["adam"]
    torch.testing.assert_close(ns["alpha"].sum(), torch.tensor(1.0))
    assert opt.param_groups[0]["lr"] == 0.0005  # StepLR: the first decay is at epoch 10
    assert_fitted(before, model)


@outcome("docs/porting.rst#2", anchor="WEIGHTINGS = {")
def _(code, tmp_path, monkeypatch):
    ew = code.replace('weighting = "MGDA"', 'weighting = "EW"', 1)
    assert ew != code
    torch.manual_seed(0)
    model = TwoHeads()
    before = fit(model)
    run(code, {"model": model, "loader": Batches(repeat=10)})
    assert (fit(model) < before).all()  # MGDA at lr 1e-4: 10 steps, a small but certain decrease
    # EW is the plain sum: bit for bit the steps of Adam with the same settings on the summed losses
    torch.manual_seed(0)
    model, reference = TwoHeads(), TwoHeads()
    reference.load_state_dict(model.state_dict())
    run(ew, {"model": model, "loader": Batches(repeat=10)})
    adam = torch.optim.Adam(reference.parameters(), lr=1e-4, weight_decay=1e-5)
    for x, y1, y2 in Batches(repeat=10):
        adam.zero_grad()
        out1, out2 = reference(x)
        (cross_entropy(out1, y1) + cross_entropy(out2, y2)).backward()
        adam.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters(), strict=True))


@outcome("docs/porting.rst#3", anchor='multiplier_update="reference"')
def _(code, tmp_path, monkeypatch):
    model = TwoHeads()
    ns = run(code, {"model": model, "loader": Batches(repeat=4), "max_iter": 2})
    opt = ns["opt"]
    assert opt.outer_every == 12  # 3 epochs of 4 batches
    torch.testing.assert_close(opt.penalty, torch.tensor(6.8e-8 * 2**2))  # grown at each of the 2 iterations
    multipliers = opt.multipliers.double()
    assert not torch.equal(opt.multipliers, torch.full((3,), 1 / 3))
    torch.testing.assert_close(multipliers.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-6, rtol=0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.98**2)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ----------------------------------------------------------------------------------- tests
@pytest.mark.parametrize(
    "snippet", [pytest.param(s, id=s.id, marks=OUTCOMES[s.id].marks if s.id in OUTCOMES else ()) for s in SNIPPETS]
)
def test_snippet_meets_its_outcome(snippet: Snippet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stated = OUTCOMES.get(snippet.id)
    if stated is None:
        pytest.fail(f"{snippet.source}:{snippet.line} is a Python block with no stated outcome: add one to OUTCOMES")
    assert stated.anchor in snippet.code, (
        f"{snippet.id} (line {snippet.line}) no longer contains {stated.anchor!r}: a block was added, "
        "removed or rewritten above it; update OUTCOMES"
    )
    stated.check(snippet.code, tmp_path, monkeypatch)


def test_every_outcome_has_its_block() -> None:
    assert sorted(OUTCOMES.keys() - {s.id for s in SNIPPETS}) == []


def _calls(nodes: list[ast.stmt], name: str) -> bool:
    """Whether the statements call ``<anything>.name(...)``, not counting nested loops."""
    stack = [node for node in nodes if not isinstance(node, (ast.For, ast.While))]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name:
            return True
        stack.extend(child for child in ast.iter_child_nodes(node) if not isinstance(child, (ast.For, ast.While)))
    return False


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.id for s in SNIPPETS])
def test_training_loops_zero_their_gradients(snippet: Snippet) -> None:
    """A loop that backpropagates and steps must also clear the gradients (``.grad`` accumulates)."""
    for loop in ast.walk(ast.parse(snippet.code)):
        if isinstance(loop, (ast.For, ast.While)) and _calls(loop.body, "backward") and _calls(loop.body, "step"):
            assert _calls(loop.body, "zero_grad"), (
                f"{snippet.id}: the loop at line {loop.lineno} never calls zero_grad()"
            )


def test_extraction_keeps_python_and_drops_the_rest() -> None:
    text = textwrap.dedent(
        """\
        Title
        =====

        .. code-block:: python
           :caption: kept

           x = 1

        .. code-block:: bash

           pip install torch

        A literal block::

            y = 2

        A literal that is not Python::

            pip install torch-moo[plot]

        .. testcode::

            z = 3

        .. math::

            a = b
        """
    )
    assert rst_blocks(text) == [(4, "x = 1"), (13, "y = 2"), (21, "z = 3")]
    assert markdown_blocks("# t\n\n```python\na = 1\n```\n\n```bash\nls\n```\n") == [(3, "a = 1")]
    assert {s.source for s in SNIPPETS} >= {"README.md", "docs/protocol.rst", "docs/porting.rst"}
