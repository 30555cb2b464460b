"""safer-instruct: the Safer-Instruct method (arXiv 2311.08685) as a kit."""

from safer_instruct.errors import SaferInstructError

__version__ = "0.1.0"
__all__ = ["SaferInstructError", "__version__"]
