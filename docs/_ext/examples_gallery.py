"""``.. examples-gallery::`` — one section per ``examples/*.py``, shown and not executed.

A dependency-free stand-in for sphinx-gallery (which runs every script during the build and
needs a ``GALLERY_HEADER.rst`` inside ``examples/``): each script gets a section titled by the
first line of its module docstring, the command that runs it, and its full source. New scripts
appear without editing the docs; editing a script triggers a rebuild of the page.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

try:  # Sphinx >= 7.4
    from sphinx.util.parsing import nested_parse_to_nodes
except ImportError:  # pragma: no cover - older Sphinx
    nested_parse_to_nodes = None
    from sphinx.util.nodes import nested_parse_with_titles


def _title(path: Path) -> str:
    try:
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    except SyntaxError:
        docstring = ""
    first = docstring.strip().splitlines()[0].strip() if docstring.strip() else path.stem
    return first.rstrip(".")


class ExamplesGallery(SphinxDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        directory = Path(self.config.examples_gallery_dir)
        scripts = sorted(directory.glob("*.py"))
        here = Path(self.env.doc2path(self.env.docname)).parent
        lines: list[str] = []
        if not scripts:
            lines += [f"No examples found in ``{directory.name}/``.", ""]
        listing = getattr(self.env, "examples_gallery_listing", {})
        listing[self.env.docname] = [script.name for script in scripts]
        self.env.examples_gallery_listing = listing
        for script in scripts:
            self.env.note_dependency(str(script))
            title = f"{script.name}: {_title(script)}"
            relative = os.path.relpath(script, here).replace(os.sep, "/")
            lines += [
                title,
                "-" * len(title),
                "",
                f"Run it from the repository root with ``python examples/{script.name}``.",
                "",
                f".. literalinclude:: {relative}",
                "   :language: python",
                "   :linenos:",
                "",
            ]
        content = StringList(lines, source=str(directory))
        if nested_parse_to_nodes is not None:
            return nested_parse_to_nodes(self.state, content, allow_section_headings=True)
        container = nodes.Element()
        nested_parse_with_titles(self.state, content, container)
        return container.children


def _scripts(app: Sphinx) -> list[str]:
    return sorted(path.name for path in Path(app.config.examples_gallery_dir).glob("*.py"))


def _outdated(app: Sphinx, env, added, changed, removed) -> list[str]:
    """Re-read a gallery page when a script is added or removed (edits are dependencies)."""
    listing = getattr(env, "examples_gallery_listing", {})
    return [docname for docname, names in listing.items() if names != _scripts(app)]


def _purge(app: Sphinx, env, docname: str) -> None:
    getattr(env, "examples_gallery_listing", {}).pop(docname, None)


def _merge(app: Sphinx, env, docnames, other) -> None:
    listing = getattr(env, "examples_gallery_listing", {})
    listing.update(getattr(other, "examples_gallery_listing", {}))
    env.examples_gallery_listing = listing


def setup(app: Sphinx) -> dict[str, object]:
    app.add_config_value("examples_gallery_dir", "", "env", types=frozenset({str}))
    app.add_directive("examples-gallery", ExamplesGallery)
    app.connect("env-get-outdated", _outdated)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
