"""Wall time of every phase of `python run.py pipeline` on the embedded default, each phase a fresh process.

    python -m benchmarks.pipeline_wall_time --data-dir /tmp/pva_bench [--profile quick] [--set KEY=VALUE ...]

Every phase runs from scratch (`--force`) in the given folder; `--profile` and `--set` are passed to
every phase.
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
    parser.add_argument("--profile", help="a shipped profile, e.g. quick")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = [item for pair in (("--set", s) for s in args.set) for item in pair]
    if args.profile:
        overrides += ["--profile", args.profile]
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
           {"seconds_by_phase": seconds, "total_s": total_s, "profile": args.profile, "overrides": args.set})


if __name__ == "__main__":
    main()
