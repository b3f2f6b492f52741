"""Wall time of every phase of `python run.py pipeline` on the embedded default, each phase a fresh process.

    python -m benchmarks.pipeline_wall_time --data-dir /tmp/pva_bench [--set KEY=VALUE ...]

On 2 CPU cores the default pipeline takes hours (phase 3.5 alone makes 13 generations per
validation task); `--set` overrides are passed to every phase, e.g. to time a smaller run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.report import report
from common.phases import PHASES

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="a folder of its own: every phase runs from scratch there")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = [item for pair in (("--set", s) for s in args.set) for item in pair]
    seconds: dict[str, float] = {}
    for spec in PHASES:
        started = time.perf_counter()
        subprocess.run([sys.executable, "run.py", "phase", spec.id, "--data-dir", args.data_dir, "--force",
                        *overrides], cwd=REPO, check=True)
        seconds[spec.id] = time.perf_counter() - started
        print(f"phase {spec.id}: {seconds[spec.id]:.0f} s", flush=True)
    total_s = sum(seconds.values())
    report("pipeline_wall_time", f"{total_s / 60:.1f} min in all; " +
           ", ".join(f"{phase} {s / 60:.1f}" for phase, s in seconds.items()) + " (min)",
           {"seconds_by_phase": seconds, "total_s": total_s, "overrides": args.set})


if __name__ == "__main__":
    main()
