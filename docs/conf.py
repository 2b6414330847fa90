"""Sphinx configuration for gaspar2's documentation.

Build it from the repository's root, with the ``docs`` extra installed::

    pip install -e '.[docs]' && sphinx-build -W --keep-going -n docs docs/_build/html
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_ext"))

import gaspar2

project = "gaspar2"
author = "the gaspar2 authors"
copyright = "gaspar2's authors, MIT licence"
release = version = gaspar2.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.graphviz",
    "gaspar2_reference",
    "python_links",
]

exclude_patterns = ["_build", "deploy", "examples", "_ext"]
html_theme = "furo"
html_title = "gaspar2 %s" % release
html_static_path: list[str] = []
graphviz_output_format = "svg"
nitpicky = True

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

# gevent and pyzmq publish their documentation, but the build fetches nothing (it must run
# offline, in CI too), so there is no inventory to resolve their names against; these are
# the only names left unlinked.
nitpick_ignore = [
    ("py:class", "gevent.event.Event"),
]
