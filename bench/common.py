"""What the bench scripts share: child processes' results, this process's memory, the report."""

from __future__ import annotations

import json
import resource
import subprocess
from pathlib import Path


def child_result(command: list[str]) -> dict:
    """Run one side of a bench in a fresh process (so its memory is its own); its last stdout line is its JSON result."""
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident set (``VmRSS``) or its peak since the last reset (``VmHWM``), in MiB."""
    status = Path("/proc/self/status")
    if not status.is_file():  # not Linux: the lifetime peak is the best there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    line = next(line for line in status.read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def write_report(report: dict, json_path: str | None) -> None:
    """Print the report; also write it to ``json_path`` when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(text, encoding="utf-8")
