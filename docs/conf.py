"""Sphinx configuration for torch_moo.

Build (from the repository root; no network needed, zero warnings expected)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Intersphinx links to Python and PyTorch are made only from inventories pinned in
``docs/_intersphinx/<name>.inv``; without them the references render as plain code, and a
build never reaches out to the network (nor warns about it). The pinned files are generated
offline by ``docs/_intersphinx/make_inventories.py`` (see its docstring for when to re-run it).
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

import torch_moo  # noqa: E402

# -- Project -------------------------------------------------------------------------------
project = "torch_moo"
author = "the torch_moo authors"
copyright = "2026 the torch_moo authors"
release = torch_moo.__version__  # the one version source (pyproject reads it too)
version = ".".join(release.split(".")[:2])

# -- General -------------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "examples_gallery",  # docs/_ext: shows every examples/*.py without running it
]
exclude_patterns = ["_build", "_generated", "_intersphinx", "_ext", "Thumbs.db", ".DS_Store"]
default_role = "code"
pygments_style = "sphinx"

# -- autodoc / napoleon (Google-style docstrings) ------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_default_options = {"show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True

# -- intersphinx (pinned inventories only) -------------------------------------------------
# torch.inv / python.inv come from docs/_intersphinx/make_inventories.py (introspects the
# installed torch; ``--check`` tells whether they are stale), never from the network.
_INVENTORIES = {
    "python": "https://docs.python.org/3/",
    "torch": "https://pytorch.org/docs/stable/",
}
intersphinx_mapping = {
    name: (url, str(DOCS / "_intersphinx" / f"{name}.inv"))
    for name, url in _INVENTORIES.items()
    if (DOCS / "_intersphinx" / f"{name}.inv").is_file()
}

# -- HTML ------------------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"torch_moo {release}"
html_static_path = []
html_theme_options = {
    "description": "Multi-objective, multi-task and sparse training as a drop-in for torch.optim",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "230px",
}
html_show_sourcelink = False

# -- examples_gallery ------------------------------------------------------------------------
examples_gallery_dir = str(ROOT / "examples")
