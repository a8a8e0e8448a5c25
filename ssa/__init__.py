"""ssa: semantic labels for Segment Anything masks."""

from typing import Any

from ssa.errors import SSAError

__version__ = "0.1.0"
__all__ = ["SSAError", "SemanticPredictor", "__version__", "predict"]

_LAZY = {"predict": "ssa.api", "SemanticPredictor": "ssa.run.predictor"}


def __getattr__(name: str) -> Any:
    # Lazy, so that `import ssa` (and `ssa --help`) stays instant.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ssa' has no attribute {name!r}")
