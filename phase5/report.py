"""`report.html`: one static file that opens from disk, with everything inlined (figures as base64 PNG, the
examples as JSON, the viewer's script and style from phase5/assets/).

Sections: the head-to-head table and figure; then each phase phase 5 reads, in pipeline order, with its headline
numbers (phase5/headlines.py), what it cost, its figures, its markdown tables and its summary in full (folded); last,
the steered programs of phases 4.5, 4.8 and 4.9 beside their unsteered ones, the changed lines highlighted, with
pass/fail badges and filters by phase, method, direction (correct / incorrect class, or the sign of c),
coefficient and outcome (phase5/assets/viewer.js).
"""

from __future__ import annotations

import base64
import difflib
import html
import json
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from common.config import Config
from common.phases import get_phase
from common.steered_runs import flip_direction
from common.utils import atomic_write_text, load_json
from phase5.headlines import headline
from phase5.markdown import markdown

ASSETS = Path(__file__).parent / "assets"
SUMMARY_CHARS = 60_000  # a folded summary longer than this is cut (the file on disk has all of it)


def write_report(config: Config, inputs: dict[str, dict[str, str]], table: dict[str, Any], path: Path) -> None:
    manifests = {phase_id: Path(info["manifest"]) for phase_id, info in inputs.items()}
    folders = {phase_id: manifest.parent for phase_id, manifest in manifests.items()}
    sections = [_phase_section(phase_id, folders[phase_id], load_json(manifests[phase_id])) for phase_id in inputs]
    examples = steered_examples(folders)
    nav = " ".join(f'<a href="#phase-{_anchor(p)}">{p}</a>' for p in inputs)
    body = "\n".join([
        f"<h1>Does the model know its code is wrong? Report of {html.escape(str(config.data_dir))}</h1>",
        f"<p>Model {html.escape(config.model_name)}, dataset {html.escape(config.dataset)}. "
        f'<a href="#head-to-head">head to head</a> · <a href="#examples">steered programs</a></p>',
        f"<nav>phases: {nav}</nav>",
        '<section id="head-to-head">',
        markdown_html(markdown(table)), _figure(path.parent / "head_to_head.png"), "</section>",
        *sections,
        '<section id="examples"><h2>Steered programs</h2>',
        "<p>Each steered program beside the unsteered one of the same task (phase 4.5: hyperparams split, every "
        "calibrated level; 4.8: validation split, each method at its chosen level and its negation; 4.9: the "
        "coefficient sweep). Changed lines are highlighted. The filters are kept in the address, so a view can be "
        "linked to.</p>",
        '<div id="filters">' + "".join(
            f'<label>{name} <select id="filter-{name}"></select></label>'
            for name in ("phase", "method", "direction", "coefficient", "outcome")) + "</div>",
        '<p id="shown"></p><div id="cards"></div><button id="more" hidden>show more</button></section>'])
    data = json.dumps(examples, separators=(",", ":")).replace("</", "<\\/")
    atomic_write_text(path, "\n".join([
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>PVA report: {html.escape(str(config.data_dir))}</title>",
        f"<style>{(ASSETS / 'report.css').read_text()}</style></head><body>", body,
        f'<script type="application/json" id="examples-data">{data}</script>',
        f"<script>{(ASSETS / 'viewer.js').read_text()}</script>", "</body></html>", ""]))


def _anchor(phase_id: str) -> str:
    return phase_id.replace(".", "_")


def _figure(path: Path) -> str:
    if not path.is_file():
        return ""
    encoded = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{encoded}">'


def _phase_section(phase_id: str, folder: Path, manifest: dict[str, Any]) -> str:
    spec = get_phase(phase_id)
    outputs = [folder / name for name in manifest.get("outputs", [])]
    cost = manifest.get("cost")
    parts = [f'<section id="phase-{_anchor(phase_id)}"><h2>Phase {phase_id}: {html.escape(spec.title)}</h2>']
    if cost:
        parts.append(f'<p class="cost">ran {manifest["created_at"]}: {cost["wall_s"]:.0f} s, peak resident memory '
                     f'{cost["peak_resident_mib"]:.0f} MiB</p>')
    lines = headline(phase_id, folder)
    if lines:
        parts.append('<ul class="headline">' + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>")
    for path in outputs:
        if path.suffix == ".png":
            parts.append(_figure(path))
        elif path.suffix == ".md" and path.parent == folder:  # tables; example files are in the viewer
            parts.append(markdown_html(path.read_text()))
    for path in outputs:
        if path.name.endswith("_summary.json") and path.is_file():
            text = path.read_text()
            cut = text if len(text) <= SUMMARY_CHARS else text[:SUMMARY_CHARS] + "\n... (cut; the file has it all)"
            parts.append(f"<details><summary>{html.escape(path.name)}</summary><pre>{html.escape(cut)}</pre>"
                         "</details>")
    parts.append("</section>")
    return "\n".join(parts)


def markdown_html(text: str) -> str:
    """The little markdown the phases write: headings, pipe tables, paragraphs, **bold**."""
    out, table = [], []

    def inline(value: str) -> str:
        escaped = html.escape(value.strip())
        pieces = escaped.split("**")
        return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(pieces))

    def flush() -> None:
        if table:
            cells = [[inline(c) for c in row.strip().strip("|").split("|")] for row in table
                     if not set(row.replace("|", "").strip()) <= {"-", ":"}]
            head, *rest = cells
            out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>" + "".join(
                "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rest) + "</table>")
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 6)
            out.append(f"<h{level}>{inline(line.lstrip('#'))}</h{level}>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush()
    return "\n".join(out)


# --- the steered programs -----------------------------------------------------------------------------------------

def _changed(before: str, after: str) -> tuple[list[int], list[int]]:
    """The line indices of each side outside the longest matching blocks (what a diff marks)."""
    a, b = before.split("\n"), after.split("\n")
    removed, added = [], []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            removed += range(i1, i2)
            added += range(j1, j2)
    return removed, added


def _example(phase_id: str, method: str, direction: str, coefficient: str, task: Any, before: bool, after: bool,
             baseline_code: str, code: str, error: str | None) -> dict[str, Any]:
    removed, added = _changed(baseline_code, code)
    return {"phase": phase_id, "method": method, "direction": direction, "coefficient": coefficient, "task": str(task),
            "before": bool(before), "after": bool(after), "outcome": flip_direction(bool(before), bool(after)),
            "baseline": f"{phase_id}|{task}", "code": code, "error": error or "",
            "changed_before": removed, "changed_after": added}


def _grid_examples(folder: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """Phase 4.5's method arms (the selection controls left out): arm names `method/class@level`."""
    rows = pd.read_parquet(folder / "coefficient_grid_results.parquet")
    for row in rows.itertuples(index=False):
        if row.arm.startswith("selection_control/"):
            continue
        target, level = row.arm.rsplit("@", 1)
        method, direction = target.split("/", 1)
        yield (_example("4.5", method, direction, f"level {level}", row.task_id, row.baseline_passed,
                        row.steered_passed, row.baseline_code, row.steered_code, row.steered_error_type),
               row.baseline_code)


def _effect_examples(folder: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """Phase 4.8's method arms and their minus-alpha arms, at the level each ran."""
    plan = load_json(folder / "phase_4_8_summary.json")["plan"]
    arms = {info["arm"]: (info, "") for info in plan.values()}
    arms |= {info["minus_arm"]: (info, ", minus alpha") for info in plan.values()}
    rows = pd.read_parquet(folder / "steered_results.parquet")
    for row in rows[rows["arm"].isin(list(arms))].itertuples(index=False):
        info, sign = arms[row.arm]
        yield (_example("4.8", info["method"], info["class"], f"level {info['level']:g}{sign}", row.task_id,
                        row.baseline_passed, row.steered_passed, row.baseline_code, row.steered_code,
                        row.steered_error_type), row.baseline_code)


def _sweep_examples(folder: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """Phase 4.9's arms at every c other than 0, beside the unsteered program of the task (none when 2.9 trained no
    adapter: 4.9 then writes its summary alone)."""
    if load_json(folder / "phase_4_9_summary.json").get("no_adapter_reason"):
        return
    rows = pd.read_parquet(folder / "sweep_rows.parquet")
    base = rows[rows["arm"] == "unsteered"].set_index("task_id")
    for row in rows[rows["arm"] != "unsteered"].itertuples(index=False):
        before = base.loc[row.task_id]
        direction = "correct" if row.coefficient > 0 else "incorrect"  # +c: the push towards passing code
        yield (_example("4.9", f"4.9/{row.arm}", direction, f"c = {row.coefficient:+g}", row.task_id,
                        before["test_passed"], row.test_passed, before["generated_code"], row.generated_code,
                        row.error_type), before["generated_code"])


def steered_examples(folders: dict[str, Path]) -> dict[str, Any]:
    """Every steered program of the method arms, and each task's unsteered program once per phase."""
    examples, baselines = [], {}
    for phase_id, read in (("4.5", _grid_examples), ("4.8", _effect_examples), ("4.9", _sweep_examples)):
        if phase_id in folders:
            for example, baseline_code in read(folders[phase_id]):
                examples.append(example)
                baselines[example["baseline"]] = baseline_code
    return {"examples": examples, "baselines": baselines}
