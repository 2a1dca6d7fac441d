"""JSON Schema text as the contract publishes it."""

from __future__ import annotations

import inspect
from typing import Any


def clean_descriptions(node: Any) -> Any:
    """Docstring-born descriptions with their indentation removed: msgspec 0.23 began
    to do this itself, and the checked-in files must not depend on which msgspec ran."""
    if isinstance(node, dict):
        return {
            k: inspect.cleandoc(v) if k == "description" and isinstance(v, str) else clean_descriptions(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [clean_descriptions(v) for v in node]
    return node
