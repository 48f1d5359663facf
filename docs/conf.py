"""Sphinx configuration of the rl3_torchrl documentation (furo, autodoc/autosummary, napoleon, sphinx-gallery).

Build with ``make -C docs html`` (warnings are errors; the tutorials are executed).
"""
from __future__ import annotations

import importlib
import inspect
import os
import re
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # the package, also when it is not pip-installed
sys.path.insert(0, str(DOCS / "_scripts"))  # gallery_order
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

import rl3_torchrl  # noqa: E402

# The tutorials run inside the sphinx process and their tensors are tiny: one intra-op thread is as fast as several
# on an idle machine and avoids a 10-50x slowdown from thread oversubscription on a busy one (e.g. shared CI runners).
torch.set_num_threads(int(os.environ.get("RL3_DOCS_NUM_THREADS", "1")))

# -- project ------------------------------------------------------------------------------------------------------
project = "rl3_torchrl"
author = "rl3_torchrl contributors"
copyright = "2025, rl3_torchrl contributors"
release = rl3_torchrl.__version__
version = ".".join(release.split(".")[:2])

# -- extensions ---------------------------------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
    "matplotlib.sphinxext.plot_directive",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "tutorials/README.rst", "**.ipynb_checkpoints"]
root_doc = "index"
default_role = "code"

# -- autodoc / autosummary / napoleon ----------------------------------------------------------------------------
# api.rst's tables generate one stub page per name under generated/; autosummary never deletes the stub of a name
# that was renamed or removed (it would then fail to import), so start from scratch on every build.
shutil.rmtree(DOCS / "generated", ignore_errors=True)
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # the Google-style docstrings already document every argument's type
# Do not pull torch's / torchrl's docstrings into our pages for undocumented overrides (forward, _step, ...).
autodoc_inherit_docstrings = False
autodoc_class_signature = "separated"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_custom_sections = [("Output keys", "params_style")]

# -- sphinx-gallery -----------------------------------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": ["tutorials"],
    "gallery_dirs": ["auto_tutorials"],
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"/_",
    "within_subsection_order": "gallery_order.TutorialOrder",
    # A tutorial that raises fails the build (after reporting every failing tutorial).
    "abort_on_example_error": False,
    "only_warn_on_example_error": False,
    "remove_config_comments": True,
    "download_all_examples": False,
    "show_memory": False,
    "capture_repr": ("_repr_html_", "__repr__"),
    "image_scrapers": ("matplotlib",),
    # Links from the tutorials' code to the API pages, and "Tutorials using X" on those pages.
    "doc_module": ("rl3_torchrl",),
    "backreferences_dir": "gen_modules/backreferences",
    "exclude_implicit_doc": {r"^_"},
}

# -- matplotlib plot directive (the concepts diagram) ------------------------------------------------------------
plot_include_source = False
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 120)]
plot_rcparams = {"savefig.bbox": "tight"}

# -- HTML ---------------------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"rl3_torchrl {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_show_sourcelink = False

# -- API coverage check -------------------------------------------------------------------------------------------
# Every name a public subpackage exports in ``__all__`` must appear in api.rst: a name missing from the reference
# is a build warning (an error under -W); so is a module of API_MODULES that exists but has no section. Modules that
# do not exist are skipped. Adding a public name to a documented module is one line in api.rst.
API_MODULES = (
    "rl3_torchrl.envs",
    "rl3_torchrl.transforms",
    "rl3_torchrl.modules",
    "rl3_torchrl.tasks",
    "rl3_torchrl.config",
    "rl3_torchrl.training",
    "rl3_torchrl.study",
    "rl3_torchrl.collectors",
    "rl3_torchrl.evaluation",
    "rl3_torchrl.plotting",
    "rl3_torchrl.checkpoint",
)


def public_names(module) -> list[str]:
    """``__all__``, else the classes and functions defined in the module whose names do not start with ``_``."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and getattr(obj, "__module__", None) == module.__name__
    ]


def documented_names(text: str) -> dict[str, set[str]]:
    """The names listed in api.rst's autosummary tables, grouped by the ``currentmodule`` above them."""
    names: dict[str, set[str]] = {}
    module = None
    for line in text.splitlines():
        match = re.match(r"^\.\. currentmodule:: (\S+)\s*$", line)
        if match:
            module = match.group(1)
            names.setdefault(module, set())
        elif module is not None and re.match(r"^ {3}\w+\s*$", line):
            names[module].add(line.strip())
    return names


def _check_api_coverage(app, env, docnames):
    from sphinx.util import logging

    logger = logging.getLogger("rl3_torchrl.api")
    documented = documented_names((DOCS / "api.rst").read_text())
    for name in API_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name == name:  # not written yet
                continue
            raise
        if name not in documented:
            logger.warning("docs/api.rst has no section for %s: add a '.. currentmodule:: %s' block", name, name)
            continue
        for public in public_names(module):
            if public not in documented[name]:
                logger.warning(
                    "%s.%s is public (in __all__, or a class or function defined there) but not listed in "
                    "docs/api.rst",
                    name,
                    public,
                )


# -- constants re-exported by a subpackage -------------------------------------------------------------------------
# A constant such as ``rl3_torchrl.modules.RL3_INPUT_KEYS`` is documented by a ``#:`` comment in the submodule that
# defines it; autodoc looks for that comment in the re-exporting package only and would otherwise show the docstring
# of ``tuple`` / ``dict``. Find the comment in the defining submodule instead.
def _constant_docstring(app, what, name, obj, options, lines):
    if what not in ("data", "attribute") or not lines:
        return
    if "\n".join(lines).strip() != inspect.cleandoc(type(obj).__doc__ or "").strip():
        return
    from sphinx.pycode import ModuleAnalyzer

    package, _, attr = name.rpartition(".")
    for module_name, module in sorted(sys.modules.items()):
        if not module_name.startswith(package + ".") or getattr(module, attr, None) is not obj:
            continue
        try:
            comment = ModuleAnalyzer.for_module(module_name).find_attr_docs().get(("", attr))
        except Exception:  # no source
            continue
        if comment:
            lines[:] = list(comment)
            return
    lines[:] = []


def setup(app):
    app.connect("env-before-read-docs", _check_api_coverage)
    app.connect("autodoc-process-docstring", _constant_docstring)
