"""Generate the pinned intersphinx inventories ``torch.inv`` and ``python.inv``.

Why
    ``docs/conf.py`` links to the PyTorch and Python documentation only through inventories
    pinned in this folder, so that a docs build is offline and reproducible. The published
    ``objects.inv`` files cannot be fetched from the machines that build the docs, so this script
    writes equivalent ones:

    * ``torch.inv`` is made by introspecting the *installed* ``torch`` (the public API of
      ``torch``, ``torch.Tensor``, ``torch.nn`` / ``.functional`` / ``.init`` / ``.utils`` /
      ``.parallel``, ``torch.optim`` / ``.lr_scheduler``, ``torch.autograd``, ``torch.amp``,
      ``torch.distributed``, ``torch.utils.data`` and ``torch.sparse``) and placing every object
      where the PyTorch documentation (https://pytorch.org/docs/stable/) documents it, e.g.
      ``generated/torch.optim.Adam.html#torch.optim.Adam``, methods of ``torch.Tensor`` under
      ``generated/torch.Tensor.add.html#torch.Tensor.add``, modules such as
      ``optim.html#module-torch.optim``. Objects are also entered under their defining-module
      name (``torch.optim.optimizer.Optimizer``, ``torch.nn.modules.module.Module``, ...), the
      name autodoc writes for base classes and type hints, pointing at the same page.
    * ``python.inv`` is a curated table of the standard-library names these docs use (builtins,
      built-in exceptions, ``collections.abc``, ``typing``, ``pathlib``, ``os``, ``pickle``,
      ``copy``, ...) with their https://docs.python.org/3/ locations.

    A few names have no object target of their own in the PyTorch docs and link to the section
    that covers them: ``torch.amp.GradScaler`` (and its methods) to ``amp.html#gradient-scaling``,
    dtypes / layouts / memory formats (``torch.float32``, ``torch.sparse_csr``, ...) to the
    tables in ``tensor_attributes.html`` / ``sparse.html``, and the modules
    ``torch.optim.lr_scheduler``, ``torch.nn.functional`` and ``torch.nn.init`` to the page or
    section listing their contents.

    Both are written in Sphinx's inventory format (version 2: four header lines, then
    zlib-compressed ``name domain:role priority uri dispname`` lines, as
    ``sphinx.util.inventory.InventoryFile.dump`` writes them), with entries sorted, so the output
    depends only on the installed torch. The header's version field records the torch version
    (without a local build tag such as ``+cpu``) and ``3`` for Python.

How and when to re-run
    From the repository root, in the environment that builds the docs::

        python docs/_intersphinx/make_inventories.py          # rewrite both .inv files
        python docs/_intersphinx/make_inventories.py --check  # exit 1 if they are out of date

    Re-run it after changing the pinned torch version (``docs/installation.rst``), or when the
    docs start to reference a standard-library name missing from ``PYTHON_OBJECTS`` below, then
    commit the regenerated ``.inv`` files. With ``nitpicky = True`` in ``conf.py`` (or
    ``python -m sphinx -n ...``) an unresolved reference shows up as a warning.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import types
import warnings
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADER = (
    "# Sphinx inventory version 2\n"
    "# Project: {project}\n"
    "# Version: {version}\n"
    "# The remainder of this file is compressed using zlib.\n"
)


class Inventory:
    """Entries ``(name, role) -> uri``; the first location given for a pair wins."""

    def __init__(self, project: str, version: str) -> None:
        self.project = project
        self.version = version
        self.entries: dict[tuple[str, str], str] = {}
        self.homes: dict[int, str] = {}  # id(class) -> URI of the first name it was entered as

    def add(self, name: str, role: str, uri: str) -> None:
        self.entries.setdefault((name, role), uri)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, role in self.entries:
            out[role] = out.get(role, 0) + 1
        return dict(sorted(out.items()))

    def to_bytes(self) -> bytes:
        lines = []
        for (name, role), uri in sorted(self.entries.items()):
            if "#" in uri and uri.endswith("#" + name):
                uri = uri[: -len(name)] + "$"  # the shorthand Sphinx itself writes
            priority = 0 if role == "py:module" else 1
            lines.append(f"{name} {role} {priority} {uri} -\n")
        header = HEADER.format(project=self.project, version=self.version)
        return header.encode() + zlib.compress("".join(lines).encode(), 9)


# ------------------------------------------------------------------------------------------
# PyTorch
# ------------------------------------------------------------------------------------------


def generated(fullname: str) -> str:
    """The page autosummary generates for ``fullname`` (``:toctree: generated``)."""
    return f"generated/{fullname}.html#{fullname}"


def _public(names) -> list[str]:
    return sorted(n for n in names if not n.startswith("_"))


def _documented(obj: object) -> bool:
    return bool(getattr(obj, "__doc__", None))


def _canonical(obj: object) -> str | None:
    """``module.qualname`` where ``obj`` is defined, if that is a public torch name."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    name = f"{module}.{qualname}"
    parts = name.split(".")
    if parts[0] != "torch" or not all(p.isidentifier() and not p.startswith(("_", "pybind11")) for p in parts):
        return None
    return name


def _member_role(cls: type, name: str) -> str | None:
    """The ``py:`` role of ``cls.name`` (own attribute), or None to leave it out."""
    raw = inspect.getattr_static(cls, name)
    if isinstance(raw, staticmethod):
        return "py:staticmethod"
    if isinstance(raw, classmethod):
        return "py:classmethod"
    if isinstance(raw, property):
        return "py:property"
    if inspect.isdatadescriptor(raw) or isinstance(raw, (types.GetSetDescriptorType, types.MemberDescriptorType)):
        return "py:attribute"
    if inspect.isclass(raw):
        return None
    if inspect.isroutine(raw):
        return "py:method"
    if isinstance(raw, (bool, int, float, str)) or raw is None:
        return "py:attribute"
    return None  # type aliases, TypeVars, caches, ...


def add_class(inv: Inventory, fullname: str, cls: type, uri: str, *, members: str = "page") -> None:
    """Enter a class, its own public members and its defining-module alias.

    ``members``: ``"page"`` puts members on the class's page (``page#Class.member``),
    ``"generated"`` gives each its own generated page (``torch.optim.Optimizer.step``),
    ``"same"`` points them at ``uri`` itself (classes documented only as a section).
    """
    role = "py:exception" if issubclass(cls, BaseException) else "py:class"
    uri = inv.homes.setdefault(id(cls), uri)  # a re-export links where the class was first placed
    inv.add(fullname, role, uri)
    canonical = _canonical(cls)
    if canonical and canonical != fullname:
        inv.add(canonical, role, uri)
    page, _, anchor = uri.partition("#")
    if members == "page" and anchor and not all(p.isidentifier() for p in anchor.split(".")):
        members = "same"  # the class is documented as a section: so are its members
    anchor = anchor if members == "page" and anchor else fullname
    for name in _public(vars(cls)):
        try:
            member_role = _member_role(cls, name)
        except AttributeError:
            continue
        if member_role is None:
            continue
        member = f"{fullname}.{name}"
        if members == "generated":
            member_uri = generated(member)
        elif members == "same":
            member_uri = uri
        else:
            member_uri = f"{page}#{anchor}.{name}"
        inv.add(member, member_role, member_uri)


def add_function(inv: Inventory, fullname: str, func: object, uri: str) -> None:
    inv.add(fullname, "py:function", uri)
    canonical = _canonical(func) if inspect.isfunction(func) else None  # not for C builtins
    if canonical and canonical != fullname:
        inv.add(canonical, "py:function", uri)


def add_namespace(
    inv: Inventory, module: types.ModuleType, *, classes, functions, names=None, only_own: bool = False
) -> None:
    """Enter the public classes and functions found in ``module``.

    ``classes`` / ``functions`` map a full name to its URI (``None`` leaves the object out).
    ``only_own`` keeps only objects defined in (a submodule of) ``module``.
    """
    modname = module.__name__
    for name in names if names is not None else _public(dir(module)):
        try:
            obj = getattr(module, name)
        except Exception:
            continue
        if isinstance(obj, types.ModuleType):
            continue
        if only_own and not str(getattr(obj, "__module__", "")).startswith(modname):
            continue
        fullname = f"{modname}.{name}"
        if inspect.isclass(obj):
            uri = classes(fullname, obj)
            if uri:
                add_class(inv, fullname, obj, uri)
        elif callable(obj) and _documented(obj):
            uri = functions(fullname, obj)
            if uri:
                add_function(inv, fullname, obj, uri)


def torch_inventory() -> Inventory:
    import torch
    import torch.amp
    import torch.autograd
    import torch.distributed
    import torch.nn
    import torch.nn.functional
    import torch.nn.init
    import torch.nn.parallel
    import torch.nn.utils
    import torch.nn.utils.rnn
    import torch.optim
    import torch.optim.lr_scheduler
    import torch.sparse
    import torch.utils.data

    version = torch.__version__.split("+", 1)[0]
    inv = Inventory("PyTorch", version)

    # Modules: the anchor of their ``automodule`` / ``py:module``, or the page that documents
    # them where the real anchor is only a tracking stub at the bottom of another page.
    for name, uri in {
        "torch": "torch.html#module-torch",
        "torch.nn": "nn.html#module-torch.nn",
        "torch.nn.functional": "nn.functional.html",
        "torch.nn.init": "nn.init.html",
        "torch.nn.parallel": "nn.html#module-torch.nn.parallel",
        "torch.nn.utils": "nn.html#module-torch.nn.utils",
        "torch.nn.utils.rnn": "nn.html#module-torch.nn.utils.rnn",
        "torch.nn.parameter": "nn.html#module-torch.nn.parameter",
        "torch.optim": "optim.html#module-torch.optim",
        "torch.optim.lr_scheduler": "optim.html#how-to-adjust-learning-rate",
        "torch.optim.optimizer": "optim.html#module-torch.optim.optimizer",
        "torch.autograd": "autograd.html#module-torch.autograd",
        "torch.amp": "amp.html#module-torch.amp",
        "torch.distributed": "distributed.html#module-torch.distributed",
        "torch.utils.data": "data.html#module-torch.utils.data",
        "torch.sparse": "sparse.html#module-torch.sparse",
    }.items():
        inv.add(name, "py:module", uri)

    # torch.Tensor: the class on tensors.html, each documented method/attribute on its own
    # generated page, except the four ``autoattribute``s kept on tensors.html.
    tensor_uri = "tensors.html#torch.Tensor"
    inline_attrs = {"T", "H", "mT", "mH"}
    inv.add("torch.Tensor", "py:class", tensor_uri)
    for name in _public(dir(torch.Tensor)):
        try:
            member = getattr(torch.Tensor, name)
            role = _member_role(torch.Tensor, name)
        except AttributeError:
            continue
        if role is None or not _documented(member) or name == "mro":
            continue
        full = f"torch.Tensor.{name}"
        inv.add(full, role, f"tensors.html#{full}" if name in inline_attrs else generated(full))

    # Top-level classes with a fixed home.
    special_classes = {
        "torch.dtype": "tensor_attributes.html#torch.dtype",
        "torch.device": "tensor_attributes.html#torch.device",
        "torch.layout": "tensor_attributes.html#torch.layout",
        "torch.memory_format": "tensor_attributes.html#torch.memory_format",
        "torch.Size": "size.html#torch.Size",
        "torch.finfo": "type_info.html#torch.finfo",
        "torch.iinfo": "type_info.html#torch.iinfo",
        "torch.autocast": "amp.html#torch.autocast",
        "torch.Generator": generated("torch.Generator"),
        "torch.Stream": generated("torch.Stream"),
        "torch.Event": generated("torch.Event"),
        "torch.no_grad": generated("torch.no_grad"),
        "torch.enable_grad": generated("torch.enable_grad"),
        "torch.inference_mode": generated("torch.autograd.grad_mode.inference_mode"),
        "torch.set_grad_enabled": generated("torch.autograd.grad_mode.set_grad_enabled"),
    }
    for fullname, uri in special_classes.items():
        obj = getattr(torch, fullname.split(".", 1)[1], None)
        if inspect.isclass(obj):
            add_class(inv, fullname, obj, uri, members="same" if "tensor_attributes" in uri else "page")

    # dtypes, layouts and memory formats are not objects of the real docs; link the tables.
    layout_uris = {
        "strided": "tensor_attributes.html#torch.layout",
        "sparse_coo": "sparse.html#sparse-coo-docs",
        "sparse_csr": "sparse.html#sparse-csr-docs",
        "sparse_csc": "sparse.html#sparse-csc-docs",
        "sparse_bsr": "sparse.html#sparse-bsr-docs",
        "sparse_bsc": "sparse.html#sparse-bsc-docs",
    }
    for name in _public(dir(torch)):
        obj = getattr(torch, name, None)
        if isinstance(obj, torch.dtype):
            inv.add(f"torch.{name}", "py:data", "tensor_attributes.html#torch.dtype")
        elif isinstance(obj, torch.layout):
            inv.add(f"torch.{name}", "py:data", layout_uris.get(name, "tensor_attributes.html#torch.layout"))
        elif isinstance(obj, torch.memory_format):
            inv.add(f"torch.{name}", "py:data", "tensor_attributes.html#torch.memory_format")

    # Top-level functions (only those with a docstring: the others are not in the docs).
    add_namespace(inv, torch, classes=lambda n, o: None, functions=lambda n, o: generated(n))

    # torch.nn: modules and parameters (Parameter & co. live under torch.nn.parameter).
    def nn_class(fullname, cls):
        if not issubclass(cls, (torch.nn.Module, torch.Tensor)):
            return None
        if cls.__module__ == "torch.nn.parameter":
            return generated(f"torch.nn.parameter.{cls.__name__}")
        return generated(fullname)

    add_namespace(inv, torch.nn, classes=nn_class, functions=lambda n, o: None)
    add_namespace(
        inv,
        torch.nn.functional,
        classes=lambda n, o: None,
        functions=lambda n, o: generated(n),
        only_own=False,
        names=_public(dir(torch.nn.functional)),
    )
    add_namespace(
        inv, torch.nn.init, classes=lambda n, o: None, functions=lambda n, o: f"nn.init.html#{n}", only_own=True
    )
    add_namespace(
        inv,
        torch.nn.utils,
        classes=lambda n, o: None,
        functions=lambda n, o: generated(n),
        names=list(torch.nn.utils.__all__),
    )
    add_namespace(
        inv, torch.nn.utils.rnn, classes=lambda n, o: generated(n), functions=lambda n, o: generated(n), only_own=True
    )
    add_namespace(
        inv,
        torch.nn.parallel,
        classes=lambda n, o: generated(n),
        functions=lambda n, o: None,
        names=["DistributedDataParallel"],
    )

    # torch.optim: Optimizer on optim.html with one generated page per method; the algorithms
    # and the schedulers on generated pages.
    add_class(
        inv, "torch.optim.Optimizer", torch.optim.Optimizer, "optim.html#torch.optim.Optimizer", members="generated"
    )
    add_namespace(
        inv,
        torch.optim,
        classes=lambda n, o: generated(n),
        functions=lambda n, o: f"optim.html#{n}",
        names=list(torch.optim.__all__),
    )
    add_namespace(
        inv,
        torch.optim.lr_scheduler,
        classes=lambda n, o: generated(n),
        functions=lambda n, o: None,
        only_own=True,
        names=getattr(torch.optim.lr_scheduler, "__all__", None),
    )

    # torch.autograd: grad/backward (and the other functions) on generated pages, classes
    # documented in autograd.html.
    add_namespace(
        inv,
        torch.autograd,
        names=list(torch.autograd.__all__),
        classes=lambda n, o: f"autograd.html#{n}",
        functions=lambda n, o: generated(_canonical(o) or n),
    )

    # torch.amp: autocast is documented as torch.autocast; GradScaler only in the
    # "Gradient Scaling" section (as torch.cuda.amp.GradScaler).
    add_class(inv, "torch.amp.autocast", torch.amp.autocast, "amp.html#torch.autocast", members="same")
    add_class(inv, "torch.amp.GradScaler", torch.amp.GradScaler, "amp.html#gradient-scaling", members="same")
    for name in ("custom_fwd", "custom_bwd"):
        add_function(inv, f"torch.amp.{name}", getattr(torch.amp, name), f"amp.html#torch.amp.{name}")
    add_function(
        inv,
        "torch.amp.is_autocast_available",
        torch.amp.is_autocast_available,
        "amp.html#torch.amp.autocast_mode.is_autocast_available",
    )

    # torch.distributed and torch.utils.data: everything inline on one page.
    if torch.distributed.is_available():
        add_namespace(
            inv,
            torch.distributed,
            only_own=True,
            classes=lambda n, o: f"distributed.html#{n}",
            functions=lambda n, o: f"distributed.html#{n}",
        )
    else:  # pragma: no cover - every supported wheel ships torch.distributed
        print("warning: torch.distributed is not available; its entries are missing", file=sys.stderr)
    add_namespace(
        inv,
        torch.utils.data,
        names=list(torch.utils.data.__all__),
        classes=lambda n, o: f"data.html#{n}",
        functions=lambda n, o: f"data.html#{n}",
    )

    # torch.sparse: functions on generated pages.
    add_namespace(
        inv,
        torch.sparse,
        classes=lambda n, o: generated(n) if n.endswith("invariants") else None,
        functions=lambda n, o: generated(n),
    )
    return inv


# ------------------------------------------------------------------------------------------
# Python
# ------------------------------------------------------------------------------------------

# name -> (role, uri); uris are relative to https://docs.python.org/3/
PYTHON_OBJECTS: dict[str, tuple[str, str]] = {}


def _py(role: str, page: str, *names: str, module: str = "") -> None:
    for name in names:
        full = f"{module}.{name}" if module else name
        PYTHON_OBJECTS[full] = (role, f"library/{page}.html#{full}")


# builtins documented in "Built-in Functions" / "Built-in Types" / "Built-in Constants"
_py(
    "py:class",
    "functions",
    "bool",
    "complex",
    "float",
    "int",
    "object",
    "type",
    "slice",
    "property",
    "classmethod",
    "staticmethod",
    "super",
)
_py(
    "py:class",
    "stdtypes",
    "str",
    "bytes",
    "bytearray",
    "memoryview",
    "list",
    "tuple",
    "dict",
    "set",
    "frozenset",
    "range",
)
_py(
    "py:function",
    "functions",
    "abs",
    "all",
    "any",
    "callable",
    "dir",
    "divmod",
    "enumerate",
    "filter",
    "format",
    "getattr",
    "hasattr",
    "hash",
    "id",
    "isinstance",
    "issubclass",
    "iter",
    "len",
    "map",
    "max",
    "min",
    "next",
    "open",
    "pow",
    "print",
    "repr",
    "reversed",
    "round",
    "setattr",
    "sorted",
    "sum",
    "vars",
    "zip",
)
_py("py:data", "constants", "None", "True", "False", "NotImplemented", "Ellipsis")
# built-in exceptions and warnings (a fixed list, so the output does not depend on the Python
# version that runs this script)
_py(
    "py:exception",
    "exceptions",
    "BaseException",
    "Exception",
    "ArithmeticError",
    "AssertionError",
    "AttributeError",
    "EOFError",
    "FileExistsError",
    "FileNotFoundError",
    "FloatingPointError",
    "ImportError",
    "IndexError",
    "KeyError",
    "KeyboardInterrupt",
    "LookupError",
    "MemoryError",
    "ModuleNotFoundError",
    "NotImplementedError",
    "OSError",
    "OverflowError",
    "PermissionError",
    "RecursionError",
    "RuntimeError",
    "StopIteration",
    "SystemExit",
    "TimeoutError",
    "TypeError",
    "UnicodeError",
    "ValueError",
    "ZeroDivisionError",
    "Warning",
    "UserWarning",
    "DeprecationWarning",
    "FutureWarning",
    "RuntimeWarning",
    "ResourceWarning",
    "PendingDeprecationWarning",
)

# modules of the standard library and the members the docs (may) use
for _mod, _page_name in {
    "collections.abc": "collections.abc",
    "typing": "typing",
    "pathlib": "pathlib",
    "os": "os",
    "os.path": "os.path",
    "pickle": "pickle",
    "copy": "copy",
    "math": "math",
    "numbers": "numbers",
    "dataclasses": "dataclasses",
    "functools": "functools",
    "itertools": "itertools",
    "warnings": "warnings",
    "tempfile": "tempfile",
    "gzip": "gzip",
    "argparse": "argparse",
    "contextlib": "contextlib",
    "enum": "enum",
    "abc": "abc",
    "collections": "collections",
    "logging": "logging",
    "random": "random",
    "time": "time",
}.items():
    PYTHON_OBJECTS[_mod] = ("py:module", f"library/{_page_name}.html#module-{_mod}")
_py(
    "py:class",
    "collections.abc",
    "Container",
    "Hashable",
    "Iterable",
    "Iterator",
    "Reversible",
    "Generator",
    "Sized",
    "Callable",
    "Collection",
    "Sequence",
    "MutableSequence",
    "Set",
    "MutableSet",
    "Mapping",
    "MutableMapping",
    "MappingView",
    "KeysView",
    "ItemsView",
    "ValuesView",
    "Awaitable",
    "Coroutine",
    "AsyncIterable",
    "AsyncIterator",
    "AsyncGenerator",
    "Buffer",
    module="collections.abc",
)
_py(
    "py:data",
    "typing",
    "Any",
    "Callable",
    "ClassVar",
    "Final",
    "Literal",
    "Optional",
    "Union",
    "Self",
    "Never",
    "NoReturn",
    "TypeAlias",
    "Tuple",
    "List",
    "Dict",
    "Set",
    "FrozenSet",
    "Type",
    "Sequence",
    "Iterable",
    "Iterator",
    "Mapping",
    "MutableMapping",
    "Generator",
    "Annotated",
    "LiteralString",
    "Concatenate",
    "TypeGuard",
    "Unpack",
    module="typing",
)
_py(
    "py:class",
    "typing",
    "TypeVar",
    "ParamSpec",
    "Generic",
    "Protocol",
    "NamedTuple",
    "TypedDict",
    "SupportsFloat",
    "SupportsInt",
    "SupportsIndex",
    "IO",
    "TextIO",
    "BinaryIO",
    module="typing",
)
_py(
    "py:function",
    "typing",
    "cast",
    "overload",
    "final",
    "get_args",
    "get_origin",
    "get_type_hints",
    "runtime_checkable",
    module="typing",
)
_py("py:data", "typing", "TYPE_CHECKING", module="typing")
_py("py:class", "pathlib", "Path", "PurePath", "PosixPath", "WindowsPath", module="pathlib")
_py("py:class", "os", "PathLike", module="os")
_py("py:data", "os", "environ", module="os")
_py("py:function", "os", "fspath", "getenv", "makedirs", module="os")
_py("py:function", "pickle", "dump", "dumps", "load", "loads", module="pickle")
_py("py:class", "pickle", "Pickler", "Unpickler", module="pickle")
_py("py:data", "pickle", "HIGHEST_PROTOCOL", "DEFAULT_PROTOCOL", module="pickle")
_py("py:exception", "pickle", "PickleError", "PicklingError", "UnpicklingError", module="pickle")
_py("py:function", "copy", "copy", "deepcopy", module="copy")
_py(
    "py:function",
    "math",
    "isfinite",
    "isnan",
    "isinf",
    "isclose",
    "sqrt",
    "log",
    "exp",
    "ceil",
    "floor",
    "comb",
    "prod",
    "fsum",
    module="math",
)
_py("py:data", "math", "inf", "nan", "pi", "e", module="math")
_py("py:class", "numbers", "Number", "Complex", "Real", "Rational", "Integral", module="numbers")
_py("py:function", "dataclasses", "dataclass", "field", "fields", "replace", "asdict", module="dataclasses")
_py("py:function", "functools", "partial", "wraps", "reduce", "lru_cache", "cache", module="functools")
_py("py:class", "functools", "cached_property", module="functools")
_py("py:function", "itertools", "chain", "product", "combinations", "islice", "accumulate", module="itertools")
_py("py:function", "warnings", "warn", "catch_warnings", "filterwarnings", "simplefilter", module="warnings")
_py("py:function", "tempfile", "mkdtemp", "mkstemp", module="tempfile")
_py("py:class", "tempfile", "TemporaryDirectory", module="tempfile")
_py("py:function", "gzip", "open", module="gzip")
_py("py:function", "contextlib", "contextmanager", module="contextlib")
_py("py:class", "enum", "Enum", "IntEnum", module="enum")
_py("py:class", "abc", "ABC", module="abc")
_py("py:function", "abc", "abstractmethod", module="abc")
_py("py:class", "collections", "OrderedDict", "defaultdict", "deque", "Counter", module="collections")
_py("py:function", "collections", "namedtuple", module="collections")
_py("py:class", "logging", "Logger", module="logging")
_py("py:function", "logging", "getLogger", module="logging")


def python_inventory() -> Inventory:
    inv = Inventory("Python", "3")
    for name, (role, uri) in PYTHON_OBJECTS.items():
        inv.add(name, role, uri)
    return inv


# ------------------------------------------------------------------------------------------


def _verify(name: str, data: bytes, expected: int) -> None:
    """Read the bytes back with Sphinx's own reader, when Sphinx is installed."""
    try:
        from sphinx.util.inventory import InventoryFile
    except ImportError:  # pragma: no cover - Sphinx is only needed to build the docs
        return
    if hasattr(InventoryFile, "loads"):  # Sphinx >= 8.2
        total = sum(len(v) for v in InventoryFile.loads(data, uri="").data.values())
    else:  # pragma: no cover - older Sphinx
        import io
        import posixpath

        total = sum(len(v) for v in InventoryFile.load(io.BytesIO(data), "", posixpath.join).values())
    if total != expected:
        raise SystemExit(f"{name}: Sphinx reads {total} entries, expected {expected}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if a pinned inventory differs from a fresh one"
    )
    parser.add_argument("--outdir", type=Path, default=HERE, help="where to write (default: this folder)")
    args = parser.parse_args(argv)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated aliases warn when touched by getattr
        inventories = {"torch.inv": torch_inventory(), "python.inv": python_inventory()}

    stale = []
    for filename, inv in inventories.items():
        data = inv.to_bytes()
        _verify(filename, data, len(inv.entries))
        path = args.outdir / filename
        summary = ", ".join(f"{role.split(':')[1]} {n}" for role, n in inv.counts().items())
        if args.check:
            if not path.is_file() or path.read_bytes() != data:
                stale.append(filename)
            continue
        path.write_bytes(data)
        print(f"{path}: {inv.project} {inv.version}, {len(inv.entries)} entries ({summary}), {len(data)} bytes")
    if stale:
        print(f"out of date: {', '.join(stale)} (run {Path(__file__).name} to regenerate)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
