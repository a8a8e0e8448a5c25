"""ssa: semantic labels for Segment Anything masks."""

from ssa.errors import SSAError

__version__ = "0.1.0"
__all__ = ["SSAError", "__version__"]
