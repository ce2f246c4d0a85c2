"""Run every benchmark module in this folder, one process each, and list where results went."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    """Run `bench_*.py` in name order; the exit status is the number of failed benchmarks."""
    here = Path(__file__).resolve().parent
    failed = 0
    for script in sorted(here.glob("bench_*.py")):
        module = f"benchmarks.{script.stem}"
        print(f"== {module}", flush=True)
        if subprocess.run([sys.executable, "-m", module], check=False).returncode != 0:
            print(f"!! {module} failed", flush=True)
            failed += 1
    print(f"results in {here / 'results'}")
    return failed


if __name__ == "__main__":
    sys.exit(main())
