"""Phase 5: the head-to-head table read from the measuring phases' files, what each phase cost, and report.html
opened in headless Chromium with its filters driven through the address.

The end-to-end fixture runs the planted model (tests/planted.py) through phases 0 to 4.9 with hand-made directions and
planted adapters: the incorrect SAE latent breaks every passable task in 4.8, and the planted LoRA adapter at c = -1
breaks every passable task in 4.9, so the table's corruption cells have known values."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import pytest

import run
from common.resources import CostMeter
from common.steered_runs import endpoint_rates
from phase5.markdown import CHOOSES_NOTHING
from phase5.report import _changed, markdown_html
from phase5.table import sweep_outcomes
from tests.planted import planted_args, write_hand_made_directions, write_planted_adapters, write_tasks

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_cost_meter_records_wall_time_and_the_peak_memory_of_its_own_phase():
    before = np.ones(40_000_000)  # 305 MiB resident before the phase starts, freed once it has
    before_peak = CostMeter().record()["peak_resident_mib"]
    del before
    meter = CostMeter()
    quiet = meter.record()
    assert quiet["peak_resident_scope"] == "phase"
    assert quiet["peak_resident_mib"] < before_peak - 200  # the earlier peak is not charged to this phase
    during = np.ones(40_000_000)
    during[::512] = 2.0
    loud = meter.record()
    assert loud["peak_resident_mib"] > quiet["peak_resident_mib"] + 200 and loud["wall_s"] >= quiet["wall_s"] >= 0


def test_a_sweep_arm_is_set_beside_the_unsteered_program_of_the_same_task():
    def rows(arm, coefficient, passed, errors=None):
        errors = errors or [None] * len(passed)
        return [{"arm": arm, "coefficient": coefficient, "task_id": t, "test_passed": p, "error_type": e,
                 "valid_code": True, "generation_time": 0.5} for t, p, e in zip("abcde", passed, errors)]

    sweep = pd.DataFrame(rows("unsteered", 0.0, [True, True, False, False, True])
                         + rows("svd_rotation", 1.0, [True, False, True, False, False])
                         + rows("svd_rotation", -1.0, [False, False, False, True, False],
                                [None, None, None, None, "unsupported"]))
    plus, minus = endpoint_rates(sweep_outcomes(sweep, "svd_rotation", 1.0)), endpoint_rates(
        sweep_outcomes(sweep, "svd_rotation", -1.0))
    assert (plus["correction"]["successes"], plus["correction"]["trials"]) == (1, 2)  # task e: unjudged in one arm
    assert (plus["preservation"]["successes"], plus["preservation"]["trials"]) == (1, 2)
    assert (minus["corruption"]["successes"], minus["corruption"]["trials"]) == (2, 2)
    assert (minus["correction"]["successes"], minus["correction"]["trials"]) == (1, 2)


def test_markdown_tables_become_html_tables_and_bold_stays_bold():
    rendered = markdown_html("# Title\n\nsome **bold** text\n\n| a | b |\n|---|---|\n| 1 | **2** |\n")
    assert "<h2>Title</h2>" in rendered and "<b>bold</b>" in rendered
    assert "<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td><b>2</b></td></tr></table>" in rendered
    assert "<script>" not in markdown_html("| <script> |\n|---|\n| x |")  # text is escaped


def test_the_changed_lines_are_those_a_diff_marks_on_each_side():
    before = "def f(x):\n    return x\n"
    after = "def f(x):\n    y = x\n    return y\n"
    assert _changed(before, after) == ([1], [1, 2])
    assert _changed(before, before) == ([], [])


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory, planted_model_dir: Path) -> Path:
    data_dir = tmp_path_factory.mktemp("reported")
    args = [*planted_args(planted_model_dir, write_tasks(data_dir)), "--set", "adapter_eval_tasks=5"]
    for phase in ("0", "0.1", "1", "3.5", "3.6"):
        assert run.main(["phase", phase, "--data-dir", str(data_dir), *args]) == 0
    write_hand_made_directions(data_dir)
    write_planted_adapters(data_dir, planted_model_dir)
    for phase in ("3.8", "4.5", "4.8", "4.9", "5"):
        assert run.main(["phase", phase, "--data-dir", str(data_dir), *args]) == 0
    return data_dir


def _rows(data_dir: Path) -> dict[str, dict]:
    table = json.loads((data_dir / "phase5" / "head_to_head.json").read_text())
    return {row["name"]: row for row in table["rows"]}


def test_phase_5_sets_each_method_beside_the_baselines_with_the_figures_its_phases_measured(reported_run):
    data_dir = reported_run
    rows = _rows(data_dir)
    analysis = json.loads((data_dir / "phase4_8" / "steering_effect_analysis.json").read_text())
    evaluation = json.loads((data_dir / "phase3_8" / "evaluation_results.json").read_text())
    kinds = [row["kind"] for row in rows.values()]
    assert kinds == sorted(kinds, key=["method", "floor", "adapter arm", "score", "baseline"].index)
    assert [n for n in rows if rows[n]["kind"] == "method"] == ["sae_latent", "mean_difference"]

    latent = rows["sae_latent"]
    incorrect = analysis["methods"]["sae_latent"]["incorrect"]
    assert latent["steering"]["corruption"] == incorrect["corruption"]  # every passable task broken (planted)
    assert latent["steering"]["corruption"]["successes"] == latent["steering"]["corruption"]["trials"] > 0
    versus = latent["steering"]["corruption_vs_controls"]
    assert versus["controls_at_or_above"] == 0 and versus["n_controls"] == analysis["n_controls"]["0.3"]
    assert latent["steering"]["disruption"]["incorrect"]["level"] == 0.3
    assert latent["detection"] == {"reason": "phase 3.8 has no sae_correct_latent score at code_last"}  # no SAE here
    family = next(r for r in evaluation["table"] if r["kind"] == "score" and r["score"].startswith("mean_difference"))
    detection = rows["mean_difference"]["detection"]
    assert detection["auroc"]["value"] == pytest.approx(family["validation"]["auroc"])
    assert detection["source"] == f"3.8 {family['score']} at code_last" and detection["brier"] is None
    assert latent["steering"]["primary_holm_p"] == {}  # the correct class reached no level: no primary test ran
    timed = latent["cost"]["seconds_per_steered_program"]
    steered = pd.read_parquet(data_dir / "phase4_8" / "steered_results.parquet")
    assert timed["n_programs"] == steered["arm"].str.startswith("sae_latent/").sum() and timed["mean"] > 0
    assert latent["cost"]["training_s"] is None  # its phases were hand-made: no recorded cost, none invented
    assert latent["cost"]["steering_peak_mib"] > 0  # phase 4.8 ran: its manifest records its peak

    lora = rows["4.9/lora"]
    assert lora["steering"]["corruption"]["successes"] == lora["steering"]["corruption"]["trials"] > 0
    assert lora["steering"]["preservation"]["successes"] == lora["steering"]["preservation"]["trials"]
    assert lora["cost"]["training_s"] == 3.0 and rows["4.9/prompting"]["cost"]["training_s"] == 0.0
    assert set(rows["4.9/svd_rotation"]["steering"]["primary_holm_p"]) == {"plus_vs_unsteered", "minus_vs_unsteered"}
    assert rows["alpha_0"]["steering"]["correction"]["successes"] == 0  # no flips from nothing

    baselines = [r for r in evaluation["table"] if r["kind"] == "baseline"]
    assert [n for n in rows if rows[n]["kind"] == "baseline"] == [f"baseline/{r['score']}" for r in baselines]
    best = rows[f"baseline/{evaluation['best_baseline']}"]
    assert best["title"].endswith("(best)") and best["detection"]["brier"] is None  # no 3.9 calibration here
    markdown = (data_dir / "phase5" / "head_to_head.md").read_text()
    assert CHOOSES_NOTHING in markdown and "## Steering (validation split)" in markdown
    assert (data_dir / "phase5" / "head_to_head.png").read_bytes().startswith(b"\x89PNG")
    manifest = json.loads((data_dir / "phase5" / "phase_output.json").read_text())
    assert manifest["cost"]["wall_s"] >= 0 and "report.html" in manifest["outputs"]


def _dom(report: Path, **filters: str) -> str:
    url = report.as_uri() + ("#" + urlencode(filters) if filters else "")
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--virtual-time-budget=5000", "--dump-dom", url], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _cards(dom: str) -> list[str]:
    return re.findall(r'<article class="card (outcome-[a-z-]+)">', dom)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (setup.sh installs it as root)")
def test_the_report_opens_in_headless_chromium_and_its_filters_pick_the_programs(reported_run):
    data_dir = reported_run
    report = data_dir / "phase5" / "report.html"
    steered = pd.read_parquet(data_dir / "phase4_8" / "steered_results.parquet")
    sweep = pd.read_parquet(data_dir / "phase4_9" / "sweep_rows.parquet")

    everything = _dom(report)
    assert "Every method head to head" in everything and "AUROC [95% CI]" in everything
    assert everything.count('src="data:image/png;base64,') >= 4  # phase 5's figure and the phases' own
    assert len(_cards(everything)) == min(100, len(re.findall(r'"phase":"4\.[589]"', report.read_text())))

    broken = _dom(report, phase="4.8", outcome="broken")
    method_arms = steered[steered["arm"].str.startswith(("sae_latent/", "mean_difference/"))]
    n_broken = int((method_arms["baseline_passed"] & ~method_arms["steered_passed"]).sum())
    assert n_broken > 0 and _cards(broken) == ["outcome-broken"] * n_broken
    assert re.search(r'<span class="line removed">11111111</span>', broken)  # the diff: "1"s out, "x"s in
    assert re.search(r'<span class="line added">xxxxxxxx</span>', broken)
    assert '<span class="badge pass">pass</span><span class="arrow">→</span><span class="badge fail">fail</span>' in broken
    assert f"showing {n_broken} of {n_broken} matching programs" in broken

    lora = _dom(report, phase="4.9", method="lora", coefficient="c = -1")
    n_lora = int(((sweep["arm"] == "lora") & (sweep["coefficient"] == -1.0)).sum())
    assert len(_cards(lora)) == n_lora == 5 and "outcome-fixed" not in _cards(lora)
    assert '<option value="c = -1">c = -1</option>' in lora
