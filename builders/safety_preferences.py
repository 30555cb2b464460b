"""Build the Safer-Instruct safety preference dataset from a config (same as `safer-instruct build`).

python builders/safety_preferences.py --config builders/configs/demo.yaml [--run-dir runs/demo] [KEY=VALUE ...]
"""

from __future__ import annotations

import sys

from safer_instruct.cli import main

if __name__ == "__main__":
    sys.exit(main(["build", *sys.argv[1:]]))
