"""Start-up: CPU seconds of `distillery --help` and `distillery COMMAND --help` against the goal of
0.25 CPU s, beside the floor every typer program pays (the interpreter, and the interpreter importing
typer).

Each figure is the least CPU time (user + system, from the child's rusage) of `--runs` runs of the
installed console script: CPU time, not wall time, and the least of several, because the machine may be
busy with other work.

    python benchmarks/startup.py
    python benchmarks/startup.py --runs 10 --command report
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

GOAL_CPU = 0.25


def least_cpu(command: list[str], runs: int) -> float:
    """The least user + system CPU seconds of `runs` runs of `command`."""
    best = float("inf")
    for _ in range(runs):
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(command)} failed")
        best = min(best, usage.ru_utime + usage.ru_stime)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--command", action="append", help="subcommands whose --help is timed (default: dedup)")
    args = parser.parse_args()
    script = shutil.which("distillery") or "distillery"
    rows = [("floor: python -c pass", [sys.executable, "-c", "pass"]),
            ("floor: python -c 'import typer'", [sys.executable, "-c", "import typer"]),
            ("distillery --help", [script, "--help"])]
    rows += [(f"distillery {name} --help", [script, name, "--help"]) for name in args.command or ["dedup"]]
    print(f"load average: {os.getloadavg()[0]:.1f}; least CPU s of {args.runs} runs")
    figures = [(label, least_cpu(command, args.runs)) for label, command in rows]
    for label, cpu in figures:
        print(f"{label:36}{cpu:>8.3f}")
    worst = max(cpu for label, cpu in figures if label.startswith("distillery"))
    print(f"{'goal':36}{GOAL_CPU:>8.3f}")
    print(f"slowest --help {worst:.3f} CPU s vs goal {GOAL_CPU} CPU s: "
          + ("meets the goal" if worst < GOAL_CPU else "MISSES the goal"))


if __name__ == "__main__":
    main()
