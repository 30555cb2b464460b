"""safer-instruct: the Safer-Instruct method (arXiv 2311.08685) as a kit."""

import os

# Before torch loads its OpenMP runtime: idle worker threads sleep instead of spinning. With spinning threads, two
# model processes on the same cores (a server and a client, or another job) slow each other down several times
# over (bench/threads.py). Set OMP_WAIT_POLICY yourself to choose otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from safer_instruct.errors import SaferInstructError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["SaferInstructError", "__version__"]
