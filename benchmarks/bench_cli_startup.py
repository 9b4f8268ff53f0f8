"""Start-up time of ``diffuseg --help``, ``segment --help`` and ``eval --help``, against a bare Python.

Each command runs in a fresh interpreter ``--repeat`` times; the median wall time is printed with
its ratio to ``python -c pass`` measured in the same run. ``--src`` times another checkout's
``src`` folder (e.g. a worktree of an older commit) through PYTHONPATH.

    python benchmarks/bench_cli_startup.py
    python benchmarks/bench_cli_startup.py --src /tmp/old-checkout/src
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "python -c pass (baseline)": ["-c", "pass"],
    "diffuseg --help": ["-m", "diffuseg", "--help"],
    "diffuseg segment --help": ["-m", "diffuseg", "segment", "--help"],
    "diffuseg eval --help": ["-m", "diffuseg", "eval", "--help"],
}


def median_seconds(args: list[str], env: dict[str, str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, *args], env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
    args = parser.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": args.src}
    base = None
    print(f"{'command':28s} {'median s':>9s} {'x bare python':>14s}   ({args.src})")
    for name, cmd in COMMANDS.items():
        seconds = median_seconds(cmd, env, args.repeat)
        base = base or seconds
        print(f"{name:28s} {seconds:9.3f} {seconds / base:14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
