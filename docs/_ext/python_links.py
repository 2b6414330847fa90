"""Links to the Python standard library's documentation for the types the API reference
names (``concurrent.futures.Future``, ``typing.BinaryIO`` ...), made without fetching
anything: a name that imports from a standard module links to that module's page on
docs.python.org. Other names stay unresolved, and nitpicky builds report them."""

from __future__ import annotations

import importlib
import sys
from typing import Any

from docutils import nodes
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment

PYTHON_DOCS = "https://docs.python.org/3/library/%s.html#%s"


def standard_module(target: str) -> str | None:
    """The standard module ``target`` is defined in, when it imports from one."""
    parts = target.split(".")
    if parts[0] not in sys.stdlib_module_names:
        return None
    try:
        importlib.import_module(target)
        return target
    except ImportError:
        pass
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            found: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        for part in parts[cut:]:
            found = getattr(found, part, None)
            if found is None:
                return None
        return module_name
    return None


def resolve(app: Sphinx, env: BuildEnvironment, node: pending_xref,
            contnode: nodes.TextElement) -> nodes.reference | None:
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    module = standard_module(target)
    if module is None:
        return None
    anchor = "module-" + target if module == target else target
    reference = nodes.reference("", "", internal=False, refuri=PYTHON_DOCS % (module, anchor))
    reference.append(contnode)
    return reference


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("missing-reference", resolve)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
