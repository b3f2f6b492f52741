"""Sandbox throughput and verdicts: honest programs through `evaluate_many`, in parallel.

    python -m benchmarks.sandbox_throughput [--workers 0] [--throughput-only]

Throughput is measured on HumanEval's 164 canonical solutions (all must pass). Then the verdicts
are counted by error type on three test layouts: HumanEval (canonical solutions), the synthetic
task set (every reference must pass, every wrong variant fail) and our own tasks in the sanitized
MBPP layout (`tests/fixtures/mbpp_sanitized_shapes.json`, which holds shapes the judge cannot
evaluate on purpose). Also counted: HumanEval tests that call a helper the program defines besides
its entry point (`poly`, `encode_cyclic`): the program supplies those, so they are as trustworthy
as the program.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import time
from collections import Counter
from pathlib import Path

from benchmarks.report import report
from common.datasets import load_mbpp_file, load_problems
from common.sandbox import Program, evaluate_many, sandbox_mode
from common.synthetic import generate_tasks

MBPP_SHAPES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "mbpp_sanitized_shapes.json"


def helpers_the_tests_borrow(tests: str, reference_code: str, entry_point: str) -> set[str]:
    """Names the tests use but neither define nor import, that the reference defines, other than the entry point."""
    test_tree = ast.parse(tests)
    used = {n.id for n in ast.walk(test_tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    bound = {n.id for n in ast.walk(test_tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    bound |= {n.name for n in ast.walk(test_tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    bound |= {a.arg for n in ast.walk(test_tree) if isinstance(n, ast.FunctionDef) for a in n.args.args}
    bound |= {(a.asname or a.name).split(".")[0] for n in ast.walk(test_tree)
              if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    defined = {n.name for n in ast.parse(reference_code).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    return (used - bound - set(dir(builtins))) & defined - {entry_point}


def _counts(results) -> dict[str, int]:
    return dict(sorted(Counter(r.error_type for r in results).items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=0, help="0 = number of CPU cores")
    parser.add_argument("--throughput-only", action="store_true", help="skip the verdict counts")
    args = parser.parse_args()
    workers = args.workers or None
    humaneval = load_problems("humaneval").problems
    mode = sandbox_mode()
    started = time.perf_counter()
    results = evaluate_many([Program(p.reference_code, p.tests) for p in humaneval], workers=workers, progress=False)
    elapsed_s = time.perf_counter() - started
    passed = sum(r.passed for r in results)
    data = {"programs": len(humaneval), "passed": passed, "seconds": elapsed_s,
            "programs_per_s": len(humaneval) / elapsed_s, "sandbox": mode,
            "failures": [p.task_id for p, r in zip(humaneval, results) if not r.passed]}
    summary = (f"{len(humaneval) / elapsed_s:.1f} programs/s ({passed}/{len(humaneval)} passed, {elapsed_s:.1f} s, "
               f"sandbox {mode})")
    if not args.throughput_only:
        tasks = generate_tasks(500)
        right = evaluate_many([Program(t.reference_code, t.test_list) for t in tasks], workers=workers, progress=False)
        wrong = evaluate_many([Program(t.wrong_code, t.test_list) for t in tasks], workers=workers, progress=False)
        shapes, _ = load_mbpp_file(MBPP_SHAPES)
        shaped = evaluate_many([Program(p.reference_code, p.tests) for p in shapes], workers=workers, progress=False)
        borrowed = {p.task_id: sorted(helpers_the_tests_borrow(p.tests, p.reference_code, p.entry_point))
                    for p in humaneval}
        data["verdicts"] = {"humaneval_canonical": _counts(results), "synthetic_reference": _counts(right),
                            "synthetic_wrong_variant": _counts(wrong), "mbpp_sanitized_shapes_reference": _counts(shaped)}
        data["humaneval_tests_borrowing_program_helpers"] = {k: v for k, v in borrowed.items() if v}
        summary += "; verdicts " + "; ".join(f"{name}: {counts}" for name, counts in data["verdicts"].items())
    report("sandbox_throughput", summary, data)


if __name__ == "__main__":
    main()
