"""Import a script of ``tools/`` in a test (``tools/`` is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_tool(script: str, module_name: str | None = None) -> ModuleType:
    """Execute ``tools/<script>.py`` as a fresh module named ``module_name`` (default: ``script``), registered in
    ``sys.modules`` so its dataclasses and pickling-free introspection work."""
    name = module_name or script
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{script}.py")
    assert spec is not None and spec.loader is not None, script
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
