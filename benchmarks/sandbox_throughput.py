"""Sandbox throughput: HumanEval's canonical solutions through `evaluate_many`, in parallel.

    python -m benchmarks.sandbox_throughput [--workers 0]

All 164 must pass (they are correct); reports programs per second.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.report import report
from common.datasets import load_problems
from common.sandbox import Program, evaluate_many, sandbox_mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=0, help="0 = number of CPU cores")
    args = parser.parse_args()
    problems = load_problems("humaneval").problems
    mode = sandbox_mode()
    started = time.perf_counter()
    results = evaluate_many([Program(p.reference_code, p.tests) for p in problems], workers=args.workers or None,
                            progress=False)
    elapsed_s = time.perf_counter() - started
    passed = sum(r.passed for r in results)
    report("sandbox_throughput", f"{len(problems) / elapsed_s:.1f} programs/s ({passed}/{len(problems)} passed, "
                                 f"{elapsed_s:.1f} s, sandbox {mode})",
           {"programs": len(problems), "passed": passed, "seconds": elapsed_s,
            "programs_per_s": len(problems) / elapsed_s, "sandbox": mode,
            "failures": [p.task_id for p, r in zip(problems, results) if not r.passed]})


if __name__ == "__main__":
    main()
