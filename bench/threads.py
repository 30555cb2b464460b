"""Two model processes on the same cores: OpenMP threads that spin (ACTIVE) against threads that sleep (PASSIVE),
and the kit's thread choice (``safer_instruct.device.configure_threads``: the cores no other task holds) against
torch's default of one thread per core.

A workload shaped like the default model's layers (SmolLM2-135M: hidden 576, MLP 1536, batch of 64 tokens, forward
and backward) runs alone, then next to a second copy of itself, under each OMP_WAIT_POLICY, and under PASSIVE with
the kit's choice. Each side runs in a fresh process (the policy is read when torch loads its OpenMP runtime). The
kit sets PASSIVE unless told otherwise, and picks its threads where it loads or runs a model.

    python bench/threads.py [--steps 150] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from common import write_report

WORKLOAD = """
import time, torch
{setup}
torch.manual_seed(0)
layers = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(576, 1536), torch.nn.SiLU(), torch.nn.Linear(1536, 576))
                               for _ in range(4)])
x = torch.randn(64, 576)
for _ in range(5):
    layers(x).sum().backward()
start = time.perf_counter()
for _ in range({steps}):
    layers(x).sum().backward()
print(time.perf_counter() - start)
"""


KIT_THREADS = "from safer_instruct.device import configure_threads; configure_threads()"


def timed(policy: str, steps: int, competitor: bool, setup: str = "") -> float:
    """Seconds the measured process takes, alone or beside a competitor (torch's default threads, same policy)."""
    env = {k: v for k, v in os.environ.items() if k not in {"OMP_NUM_THREADS", "OMP_WAIT_POLICY"}} | {
        "OMP_WAIT_POLICY": policy
    }
    code = WORKLOAD.format(steps=steps, setup=setup)
    rival_code = WORKLOAD.format(steps=steps * 4, setup="")
    rival = (
        subprocess.Popen(
            [sys.executable, "-c", rival_code],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        if competitor
        else None
    )
    try:
        time.sleep(1.0 if competitor else 0)
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
        return round(float(out.strip()), 3)
    finally:
        if rival:
            rival.kill()
            rival.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--json")
    args = parser.parse_args()
    seconds = {
        f"{policy.lower()}_{side}": timed(policy, args.steps, side == "shared")
        for policy in ("ACTIVE", "PASSIVE")
        for side in ("alone", "shared")
    } | {f"kit_{side}": timed("PASSIVE", args.steps, side == "shared", KIT_THREADS) for side in ("alone", "shared")}
    write_report(
        {
            "cores": len(os.sched_getaffinity(0)),
            "steps": args.steps,
            "seconds": seconds,
            "passive_vs_active_alone": round(seconds["active_alone"] / seconds["passive_alone"], 3),
            "passive_vs_active_shared": round(seconds["active_shared"] / seconds["passive_shared"], 3),
            "kit_vs_default_threads_shared": round(seconds["passive_shared"] / seconds["kit_shared"], 3),
            "kit_vs_default_threads_alone": round(seconds["passive_alone"] / seconds["kit_alone"], 3),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
