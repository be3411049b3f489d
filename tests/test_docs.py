"""The documentation site (docs/): every public name documented, and a build without warnings.

Public means: the names in ``__all__`` of the modules of ``API_PAGES`` in docs/conf.py (for a
module without ``__all__``, its functions and classes whose names do not start with an
underscore). Every such function and class must have a docstring, and so must the public methods
and properties of the classes. A new module of the package must be put in ``API_PAGES`` or
``INTERNAL_MODULES`` there. Each page docs/api/<page>.rst lists its module's names in groups; a
name no group lists is documented under "More" on that page.

The build test runs ``sphinx-build -W --keep-going`` (warnings are errors) when Sphinx, numpydoc
and myst-parser are installed (the ``test`` and ``docs`` extras install them), then checks that
every public name is in the built site's inventory.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import pkgutil
import subprocess
import sys
import textwrap
import time

import pytest

import meanfield

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


def _load_conf():
    """docs/conf.py as a module: its API_PAGES, INTERNAL_MODULES and public_objects are the
    definitions the site is built from."""
    spec = importlib.util.spec_from_file_location("meanfield_docs_conf", os.path.join(DOCS, "conf.py"))
    module = importlib.util.module_from_spec(spec)
    saved = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved                 # conf.py puts the checkout first, for sphinx-build only
    return module


conf = _load_conf()
PUBLIC = conf.API_PAGES
INTERNAL = set(conf.INTERNAL_MODULES)
public_objects = conf.public_objects

# Undocumented members in files this documentation change did not edit (to be fixed there).
KNOWN_UNDOCUMENTED = set()


def is_routine(value) -> bool:
    """A function, a class or a compiled (numba) function: what must carry a docstring."""
    return inspect.isclass(value) or inspect.isroutine(value) or hasattr(value, "py_func")


def public_members(cls) -> dict:
    """name -> attribute of the public methods and properties a class defines itself."""
    members = {}
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if isinstance(value, property) or inspect.isfunction(value):
            members[name] = value
    return members


def test_every_module_is_classified():
    found = set()
    for info in pkgutil.walk_packages(meanfield.__path__, "meanfield."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            found.add(info.name)
    found.add("meanfield.kernels")
    unknown = sorted(found - set(PUBLIC) - INTERNAL)
    assert not unknown, f"modules neither public nor internal in tests/test_docs.py: {unknown}"


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_public_names_have_docstrings(module_name):
    missing = []
    for name, value in public_objects(module_name).items():
        if inspect.ismodule(value) or not is_routine(value):
            continue
        if not (inspect.getdoc(value) or "").strip():
            missing.append(f"{module_name}.{name}")
        if inspect.isclass(value):
            for member_name in public_members(value):
                full = f"{module_name}.{name}.{member_name}"
                # getattr + getdoc: a method that overrides a documented one inherits its docstring
                doc = inspect.getdoc(getattr(value, member_name, None)) if not isinstance(
                    vars(value)[member_name], property) else vars(value)[member_name].__doc__
                if not (doc or "").strip() and full not in KNOWN_UNDOCUMENTED:
                    missing.append(full)
    assert not missing, f"public names without a docstring: {missing}"


# Public functions allowed, for now, to lack their Parameters / Returns sections (none: a name put
# here must be removed once its sections are written; test_pending_sections_are_still_pending).
PENDING_SECTIONS = set()


def public_functions(module_name: str) -> dict:
    """name -> Python function of a module's public functions (classes, modules and constants
    left out); a numba function gives its ``py_func``, a decorated one (``lru_cache``) the
    function it wraps."""
    functions = {}
    for name, value in public_objects(module_name).items():
        if inspect.ismodule(value) or inspect.isclass(value):
            continue
        function = inspect.unwrap(getattr(value, "py_func", value))
        if inspect.isfunction(function):
            functions[name] = function
    return functions


def _returns_value(node) -> bool:
    """Whether the body under ``node`` has ``return <expression>`` (other than ``return None``)
    or ``yield``, not counting nested functions, lambdas and classes."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(child, ast.Return) and child.value is not None and not (
                isinstance(child.value, ast.Constant) and child.value.value is None):
            return True
        if isinstance(child, (ast.Yield, ast.YieldFrom)) or _returns_value(child):
            return True
    return False


def missing_sections(function) -> list[str]:
    """The numpydoc sections a function lacks: "Parameters" when it takes parameters (other
    than self, cls, *args and **kwargs), "Returns" when its code returns a value (a function
    without ``return <expression>`` returns None: its outputs, written in place, are documented
    under Parameters)."""
    from numpydoc.docscrape import FunctionDoc

    source = textwrap.dedent(inspect.getsource(function))
    definition = next(node for node in ast.walk(ast.parse(source))
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))
    parameters = [p for p in inspect.signature(function).parameters.values()
                  if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    doc = FunctionDoc(function)
    missing = []
    if parameters and not doc["Parameters"]:
        missing.append("Parameters")
    if _returns_value(definition) and not (doc["Returns"] or doc["Yields"]):
        missing.append("Returns")
    return missing


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_public_functions_have_parameters_and_returns(module_name):
    pytest.importorskip("numpydoc", reason="the section check parses with numpydoc (pip install -e '.[docs]')")
    missing = []
    for name, function in public_functions(module_name).items():
        full = f"{module_name}.{name}"
        if full in PENDING_SECTIONS:
            continue
        lacks = missing_sections(function)
        if lacks:
            where = f"{os.path.relpath(inspect.getsourcefile(function), ROOT)}:{inspect.getsourcelines(function)[1]}"
            missing.append(f"{full} ({where}): no {' and no '.join(lacks)} section")
    assert not missing, "public functions without numpydoc sections:\n" + "\n".join(missing)


def test_pending_sections_are_still_pending():
    pytest.importorskip("numpydoc", reason="the section check parses with numpydoc (pip install -e '.[docs]')")
    functions = {f"{module_name}.{name}": function
                 for module_name in PUBLIC for name, function in public_functions(module_name).items()}
    unknown = sorted(PENDING_SECTIONS - set(functions))
    done = sorted(name for name in PENDING_SECTIONS & set(functions) if not missing_sections(functions[name]))
    assert not unknown, f"PENDING_SECTIONS names no public function: {unknown}"
    assert not done, f"these have their sections now: remove them from PENDING_SECTIONS: {done}"


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx", reason="the docs build needs sphinx (pip install -e '.[docs]')")
    pytest.importorskip("numpydoc", reason="the docs build needs numpydoc (pip install -e '.[docs]')")
    pytest.importorskip("myst_parser", reason="the docs build needs myst-parser (pip install -e '.[docs]')")
    html = tmp_path / "html"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
               "-d", str(tmp_path / "doctrees"), DOCS, str(html)]
    start = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, (f"sphinx-build failed ({elapsed:.0f} s):\n{result.stdout[-5000:]}\n"
                                    f"{result.stderr[-20000:]}")

    from sphinx.util.inventory import InventoryFile

    with open(html / "objects.inv", "rb") as f:
        inventory = InventoryFile.load(f, "", os.path.join)
    documented = {name for entries in inventory.values() for name in entries}
    for page in ("getting_started", "experiments", "troubleshooting", "hdf5", "cluster_gpu", "performance",
                 "SCIENCE", "capabilities/langevin", "api/index", "examples/quickstart"):
        assert (html / (page + ".html")).is_file(), page
    missing = []
    for module_name in PUBLIC:
        for name, value in public_objects(module_name).items():
            if not inspect.ismodule(value) and f"{module_name}.{name}" not in documented:
                missing.append(f"{module_name}.{name}")
    assert not missing, f"public names missing from the built API reference: {missing}"
