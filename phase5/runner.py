"""Phase 5: every method head to head on the validation split, and one report a person can open from disk.

Reads what the measuring phases wrote (3.8 and 3.9: detection; 4.8 and 4.9: steering; 2.9: the adapters' training;
every phase's manifest: its wall time and peak memory) and sets it side by side (phase5/table.py). It fits nothing
and chooses nothing: selection happened on the sae and hyperparams splits, in the phases that report it.

Writes `head_to_head.json` (the rows with every figure's count and interval), `head_to_head.md`, `head_to_head.png`
and `report.html` (phase5/report.py): each phase's headline numbers and figures, and a viewer of the steered
programs of phases 4.5, 4.8 and 4.9 beside their unsteered ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
import pandas as pd

from common.logging import get_logger
from common.phase_run import PhaseRun
from common.utils import atomic_write_text, load_json, save_json
from phase5.markdown import CHOOSES_NOTHING, markdown
from phase5.plots import plot_head_to_head
from phase5.report import write_report
from phase5.table import Sources, head_to_head

logger = get_logger("phase5")


def run(phase: PhaseRun) -> Path:
    sources = read_sources(phase.upstream, {p: Path(i["manifest"]) for p, i in phase.inputs.items()})
    rows = head_to_head(sources)
    table = {"chooses_nothing": CHOOSES_NOTHING, "notes": _notes(sources), "position": sources.steering["position"],
             "layer": sources.steering["layer"], "best_baseline": sources.evaluation["best_baseline"], "rows": rows}
    out_dir = phase.out_dir
    json_path, markdown_path, plot_path, report_path = (out_dir / name for name in (
        "head_to_head.json", "head_to_head.md", "head_to_head.png", "report.html"))
    save_json(table, json_path)
    atomic_write_text(markdown_path, markdown(table))
    plot_head_to_head(rows, table["best_baseline"], plot_path)
    write_report(phase.config, phase.inputs, table, report_path)
    logger.info("head to head: %d rows (%s); report %s", len(rows),
                ", ".join(f"{kind} {sum(r['kind'] == kind for r in rows)}" for kind in dict.fromkeys(
                    r["kind"] for r in rows)), report_path)
    return phase.finish([json_path, markdown_path, plot_path, report_path])


def read_sources(folder, manifests: dict[str, Path]) -> Sources:
    """`folder(phase_id)`: an upstream phase's output folder; `manifests`: each upstream phase's manifest."""
    calibration_path = folder("3.9") / "calibration_results.json"
    sweep = load_json(folder("4.9") / "phase_4_9_summary.json")
    missing = None if calibration_path.is_file() else load_json(folder("3.9") / "phase_3_9_summary.json").get(
        "no_dictionary_reason", "no calibration_results.json")
    return Sources(
        evaluation=load_json(folder("3.8") / "evaluation_results.json"),
        calibration=load_json(calibration_path) if calibration_path.is_file() else None, calibration_missing=missing,
        steering=load_json(folder("4.8") / "steering_effect_analysis.json"),
        steered_rows=pd.read_parquet(folder("4.8") / "steered_results.parquet"),
        sweep=sweep,
        sweep_rows=None if sweep.get("no_adapter_reason") else pd.read_parquet(folder("4.9") / "sweep_rows.parquet"),
        adapters=load_json(folder("2.9") / "phase_2_9_summary.json"),
        costs={p: cost for p, path in manifests.items() if (cost := load_json(path).get("cost"))})


def _notes(sources: Sources) -> list[str]:
    validation = sources.evaluation["counts"]["validation"]
    analysis, sweep = sources.steering, sources.sweep
    primary_48 = len(analysis["primary"])
    return [
        f"Detection: phase 3.8's validation split, {validation['rows']} programs of {validation['tasks']} tasks "
        f"({validation['passing']} passing), every temperature; a method's score is the one its registry entry names, "
        f"read at 4.8's steering position ({analysis['position']}); its candidate (latent or layer) was chosen on "
        "hyperparams and may sit at another layer than the steering one. Self-steering's score is 3.9's calibrated "
        "confidence, which reads the routing of the last-prompt activation and the program's mean margin, not the "
        "program's activations: within a task its ranking is the margin's. A 3.8 score's gain is its incremental AUROC "
        "(the score added to the baseline) over two baselines: its comparison baseline, the one chosen on "
        "hyperparams, and the one declared before any data (confidence and length). 3.9's calibrated confidence is "
        "compared by AUROC difference (the confidence in place of the baseline, on the same programs) with the "
        "model's mean log-probability (seed 000's comparison) and with the declared baseline: not the same measure "
        "as an incremental AUROC. Brier beside the no-skill Brier p(1 - p) of always saying the pass rate. "
        "Intervals: 95% task bootstrap; a within-task AUROC from fewer than 5 tasks with both classes is given "
        "without one.",
        f"Steering, phase 4.8: {analysis['baseline']['n_tasks']} validation tasks ({analysis['baseline']['n_passing']} "
        f"passing unsteered), layer {analysis['layer']}, each method at the disruption level phase 4.5 set for it "
        "(preregistered, or chosen on hyperparams: each cell says which); "
        f"correction and preservation by the correct-class arm, corruption by the incorrect-class arm; controls of "
        f"the same disruption on {analysis['control_tasks']['n']} of those tasks. Holm over its {primary_48} declared "
        "primary endpoints (method x endpoint), each tested by its prediction p against the controls (the rank p "
        "is shown beside it); every other figure is exploratory.",
        _sweep_note(sweep),
        "Rates: successes/trials with 95% Wilson intervals. Against controls: the arm's own rate on the control "
        "tasks beside the controls' mean there. Cost: the wall time and peak resident memory each phase's manifest "
        "records (a phase that makes several methods at once, such as 2.7 or 2.9, is charged in full to each; an "
        "adapter's own training loop is given beside; a phase resumed after a kill records its last run only); "
        "seconds per steered program: the mean, over the row's generated programs, of each one's prefill and its "
        "share of every batched decode step it was in, so it prices a method at the batch it ran in (4.8 and 4.9 "
        "batch differently): the same order across rows, not a ranking."]


def _sweep_note(sweep: dict[str, Any]) -> str:
    if sweep.get("no_adapter_reason"):
        return f"Steering, phase 4.9: no adapter rows ({sweep['no_adapter_reason']})."
    unsteered = next(iter(sweep["arms"].values()))["by_coefficient"]["0"]["pass_rate"]["successes"]
    return (f"Steering, phase 4.9: {sweep['n_tasks']} of the validation tasks (a seeded draw; {unsteered} passing "
            "unsteered), each arm at c = +1 (correction, preservation, valid code) and c = -1 (corruption) against "
            f"the unsteered program of the same task; its own Holm family of {len(sweep['primary']['p'])} (the SVD "
            "adapter's pass rate at +1 and at -1 against unsteered, exact McNemar); no disruption-matched controls "
            "(the random adapter is one arm). The two phases' tasks, strengths and families differ: compare rows "
            "within a phase, and across phases only descriptively.")

