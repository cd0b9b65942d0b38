"""How long `maskgit --help` takes: the median of N fresh interpreters.

Printing help imports no torch (the package's names load on first use and the commands
import their modules when they run), so this measures Python's start plus the parser.
For comparison it also times `import torch` alone, the cost `--help` no longer pays.

    python benchmarks/bench_cli_startup.py              # 11 runs each
    python benchmarks/bench_cli_startup.py --runs 21

The first run of each warms the file cache and is not counted. Wall-clock seconds: on a
busy machine they include waiting for a core.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def wall_seconds(argv: list[str], runs: int) -> list[float]:
    """Wall-clock seconds of `runs` fresh runs of `argv` (after one uncounted warm-up)."""
    times = []
    for index in range(runs + 1):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        if index:
            times.append(time.perf_counter() - started)
    return times


def main() -> None:
    """Print the median and range of `maskgit --help` and of `import torch`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11, help="counted runs each (default 11)")
    args = parser.parse_args()
    cases = {
        "maskgit --help": [sys.executable, "-m", "maskgit.cli", "--help"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    }
    for label, argv in cases.items():
        times = wall_seconds(argv, args.runs)
        print(
            f"{label:26s} median {statistics.median(times):.2f} s "
            f"(min {min(times):.2f}, max {max(times):.2f}; {args.runs} runs)"
        )


if __name__ == "__main__":
    main()
