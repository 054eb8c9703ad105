"""plot_front on the Agg backend: what it draws, its errors, and the message without matplotlib."""

import sys

import matplotlib
import pytest
import torch

from torch_moo.pareto import Front, hypervolume, plot_front

matplotlib.use("Agg")  # the test extra installs matplotlib; no display here
import matplotlib.pyplot as plt


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def drawn(ax, label):
    """The points of the scatter with that legend label (none if it was not drawn)."""
    found = [c for c in ax.collections if c.get_label() == label]
    return len(found[0].get_offsets()) if found else 0


POINTS_2D = [[0.0, 1.0], [0.2, 0.2], [1.0, 0.0], [0.5, 0.5], [0.2, 0.2], [1.2, 0.1]]  # 2 dominated


def test_2d_front_highlights_the_non_dominated_points_and_shades_the_hypervolume():
    ax = plot_front(POINTS_2D, reference=[1.1, 1.1], knee=1, labels=["loss", "l1"])
    assert isinstance(ax, matplotlib.axes.Axes) and ax.name == "rectilinear"
    assert (drawn(ax, "non-dominated"), drawn(ax, "dominated"), drawn(ax, "knee"), drawn(ax, "reference")) == (
        4,
        2,
        1,
        1,
    )
    dominated = next(c for c in ax.collections if c.get_label() == "dominated")
    assert dominated.get_alpha() < 1
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("loss", "l1")
    # The shaded staircase polygon (shoelace area) is exactly the region the hypervolume measures:
    # (1.2, 0.1) lies outside the reference box and adds nothing.
    (polygon,) = ax.patches
    x, y = torch.tensor(polygon.get_xy(), dtype=torch.float64).T
    area = 0.5 * abs((x * y.roll(-1) - x.roll(-1) * y).sum().item())
    assert area == pytest.approx(hypervolume(POINTS_2D, [1.1, 1.1]), abs=1e-12)


def test_2d_front_without_reference_draws_only_points_and_staircase():
    ax = plot_front([[0.0, 1.0], [1.0, 0.0]])
    assert (drawn(ax, "non-dominated"), drawn(ax, "dominated"), len(ax.patches)) == (2, 0, 0)
    assert ax.lines[0].get_xydata().tolist() == [[0.0, 1.0], [1.0, 1.0], [1.0, 0.0]]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("f1", "f2")


def test_3d_front_on_new_or_given_axes():
    points = [[0.0, 1.0, 0.5], [1.0, 0.0, 0.5], [0.5, 0.5, 0.0], [0.6, 0.6, 0.6]]
    ax = plot_front(points, reference=[2, 2, 2], knee=2)
    assert ax.name == "3d" and ax.get_zlabel() == "f3"
    assert (drawn(ax, "non-dominated"), drawn(ax, "dominated"), drawn(ax, "knee"), drawn(ax, "reference")) == (
        3,
        1,
        1,
        1,
    )
    given = plt.figure().add_subplot(projection="3d")
    assert plot_front(Front(points, points, [None] * 4), ax=given) is given  # a Front plots its values
    given.figure.canvas.draw()  # renders on Agg


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"points": [[1.0], [2.0]]}, r"plot_front draws 2 or 3 objectives, got 1"),
        ({"points": [[1.0, 2.0, 3.0, 4.0]]}, r"plot_front draws 2 or 3 objectives, got 4"),
        ({"points": [[1.0, 2.0]], "labels": ["a"]}, r"labels must name the 2 objectives, got 1: \['a'\]"),
        ({"points": [[1.0, 2.0]], "knee": 1}, r"knee must be a row index in \[0, 1\), got 1"),
        (
            {"points": [[1.0, 2.0]], "reference": [3.0]},
            r"reference must have 2 entries \(one per objective\), got shape \(1,\)",
        ),
        ({"points": [[1.0, 2.0, 3.0]], "ax": "2d"}, r"3 objectives need 3-D Axes, got 'rectilinear' Axes"),
        ({"points": [[1.0, 2.0]], "ax": "3d"}, r"2 objectives need 2-D Axes, got '3d' Axes"),
    ],
)
def test_errors(kwargs, message):
    if "ax" in kwargs:
        kwargs["ax"] = plt.figure().add_subplot(projection=None if kwargs["ax"] == "2d" else "3d")
    with pytest.raises(ValueError, match=message):
        plot_front(**kwargs)


def test_missing_matplotlib_asks_for_the_plot_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` fail
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"plot_front needs matplotlib: pip install torch-moo\[plot\]"):
        plot_front([[0.0, 1.0], [1.0, 0.0]])
