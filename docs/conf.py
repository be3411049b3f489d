"""Sphinx configuration of the meanfield documentation.

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (``tests/test_docs.py``
does the same into a temporary folder). Pages are Markdown (MyST) except the API reference,
which autosummary generates from the docstrings (numpydoc format) at every build.
"""
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# Import the package from this checkout (meanfield/__init__.py finds the top-level kernels/).
sys.path.insert(0, ROOT)

import meanfield  # noqa: E402

project = "meanfield"
author = "the meanfield authors"
copyright = "the meanfield authors, BSD-3-Clause"
version = release = meanfield.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# MyST: $...$ math is not used (SCIENCE.md writes its formulas in Unicode); headings get
# anchors so that pages can link to sections.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# autodoc / autosummary / numpydoc
autosummary_imported_members = True
autodoc_typehints = "none"          # numpydoc's Parameters sections say the types
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# Python objects named in docstrings resolve within the documented modules only; a name that
# resolves nowhere is plain text, not a warning (the docstrings predate the site).
default_role = "literal"
# Code blocks without a language (printed tables, shell output) are not highlighted.
highlight_language = "text"

html_theme = "alabaster"
html_title = f"meanfield {release}"
html_static_path = []
html_theme_options = {
    "description": "Two-layer networks as particle clouds under Wasserstein gradient flow",
    "fixed_sidebar": True,
    "page_width": "1340px",
    "body_max_width": "none",
    "sidebar_width": "240px",
}
html_sidebars = {"**": ["about.html", "navigation.html", "relations.html", "searchbox.html"]}


# --- Docstrings written as plain text --------------------------------------------------------
# The docstrings write norms and absolute values as |a|, which reStructuredText reads as a
# substitution reference ("Undefined substitution referenced"). Rather than escape every bar in
# the source (where help() shows the docstring verbatim), the bars are escaped here, outside
# inline literals, literal blocks, directives and doctests, before numpydoc parses the text.
_DIRECTIVE = re.compile(r"^\s*\.\. [\w:-]+::")


def _escape_bars(line: str) -> str:
    parts = line.split("``")
    for i in range(0, len(parts), 2):          # outside ``inline literals``
        parts[i] = re.sub(r"(?<!\\)\|", r"\\|", parts[i])
    return "``".join(parts)


def _escape_docstring(lines: list) -> None:
    literal_indent = None       # indentation of the line that opened a literal block
    doctest = False
    for k, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None:
            if not stripped or indent > literal_indent:
                continue
            literal_indent = None
        if doctest:
            if stripped:
                continue
            doctest = False
        if stripped.startswith(">>>"):
            doctest = True
            continue
        if _DIRECTIVE.match(line):
            literal_indent = indent
            continue
        lines[k] = _escape_bars(line)
        if stripped.endswith("::"):
            literal_indent = indent


def _process_docstring(app, what, name, obj, options, lines):
    _escape_docstring(lines)



# --- The API reference ------------------------------------------------------------------------
# The public modules and their pages docs/api/<page>.rst, which list the public names in groups
# (autosummary). A public name that no group lists (a new function) still gets documented: it is
# listed under "More" through docs/api/_more_<page>.rst, written at each build. tests/test_docs.py
# checks every public name's docstring and that the built reference has every one of them.
API_PAGES = {
    "meanfield": "meanfield",
    "meanfield.kernels": "kernels",
    "meanfield.distance": "distance",
    "meanfield.landscape": "landscape",
    "meanfield.analysis": "analysis",
    "meanfield.signal": "signal",
    "meanfield.online": "online",
    "meanfield.linear": "linear",
    "meanfield.radial": "radial",
    "meanfield.lazy": "lazy",
    "meanfield.limits": "limits",
    "meanfield.sweep": "sweep",
}
# Modules of the package that are not API: the command line's implementation, documented by its
# usage on the pages (every other module without a leading underscore must be in API_PAGES).
# meanfield.io owns the run-file format: docs/hdf5.md documents the layout it writes and reads.
# meanfield.engine's public names are those of meanfield itself (documented on its page).
INTERNAL_MODULES = ("meanfield.cli", "meanfield.experiments", "meanfield.report", "meanfield.io", "meanfield.engine")


def public_objects(module_name: str) -> dict:
    """name -> object of a module's public names: ``__all__``, or else the functions and classes
    it defines whose names do not start with an underscore."""
    import importlib
    import inspect

    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        names = [name for name, value in vars(module).items()
                 if not name.startswith("_") and (inspect.isfunction(value) or inspect.isclass(value))
                 and value.__module__ == module_name]
    return {name: getattr(module, name) for name in names}


def listed_names(page: str) -> set:
    """The names a page of the API reference lists (autosummary entries and autodata)."""
    with open(os.path.join(HERE, "api", page + ".rst"), encoding="utf-8") as f:
        text = f.read()
    names = set(re.findall(r"^\.\. autodata:: (\w+)", text, flags=re.M))
    for block in re.findall(r"^\.\. autosummary::\n((?:[ \t]+.*\n|[ \t]*\n)+)", text, flags=re.M):
        names.update(line.strip() for line in block.splitlines()
                     if line.strip() and not line.strip().startswith(":"))
    return names


def _write_if_changed(path: str, text: str) -> None:
    old = open(path, encoding="utf-8").read() if os.path.exists(path) else None
    if old != text:                         # rewriting an unchanged file would rebuild its pages
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def write_api_remainders(app) -> None:
    import inspect

    for module_name, page in API_PAGES.items():
        listed = listed_names(page)
        rest = [name for name, value in public_objects(module_name).items()
                if name not in listed and not inspect.ismodule(value)]
        text = ".. Written by docs/conf.py: public names that no group of this page lists.\n"
        if rest:
            text += ("\nMore\n----\n\n.. currentmodule:: " + module_name + "\n\n.. autosummary::\n"
                     "   :toctree: generated\n   :nosignatures:\n\n"
                     + "".join(f"   {name}\n" for name in rest))
        _write_if_changed(os.path.join(HERE, "api", f"_more_{page}.rst"), text)


autosummary_generate = [f"api/{page}.rst" for page in API_PAGES.values()] + [
    f"api/_more_{page}.rst" for page in API_PAGES.values()]
exclude_patterns += ["api/_more_*.rst"]

# --- The example notebooks --------------------------------------------------------------------
# runs/notebooks/*.ipynb (stored without outputs) become Markdown pages under examples/ at each
# build: markdown cells as they are, code cells as Python blocks. No notebook is executed (the
# test suite runs them: tests/test_notebooks.py) and no extension beyond MyST is needed.
NOTEBOOKS = os.path.join(ROOT, "runs", "notebooks")
EXAMPLES = os.path.join(HERE, "examples")


def notebook_page(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        cells = json.load(f)["cells"]
    name = os.path.relpath(path, ROOT)
    out = []
    for cell in cells:
        source = "".join(cell["source"]).strip("\n")
        if not source:
            continue
        if cell["cell_type"] == "markdown":
            out.append(source)
        elif cell["cell_type"] == "code":
            out.append("```python\n" + source + "\n```")
    if out and out[0].startswith("# "):
        title, _, rest = out[0].partition("\n")
        out[0] = title + f"\n\n*The notebook `{name}`, as stored (run it to see the outputs).*\n" + rest
    else:
        out.insert(0, f"# {os.path.basename(path)}\n\n*The notebook `{name}`, as stored.*")
    return "\n\n".join(out) + "\n"


def write_examples(app) -> None:
    os.makedirs(EXAMPLES, exist_ok=True)
    wanted = {}
    for name in sorted(os.listdir(NOTEBOOKS)):
        if name.endswith(".ipynb"):
            wanted[name[:-len(".ipynb")] + ".md"] = notebook_page(os.path.join(NOTEBOOKS, name))
    for name in os.listdir(EXAMPLES):
        if name.endswith(".md") and name not in wanted:
            os.remove(os.path.join(EXAMPLES, name))
    for name, text in wanted.items():
        target = os.path.join(EXAMPLES, name)
        _write_if_changed(target, text)


def setup(app):
    # Before numpydoc (priority 500), which parses the sections of these lines.
    app.connect("autodoc-process-docstring", _process_docstring, priority=100)
    # Before autosummary's stub generation (priority 500), which reads the _more_ files.
    app.connect("builder-inited", write_api_remainders, priority=100)
    app.connect("builder-inited", write_examples)
