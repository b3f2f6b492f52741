"""Phase 5: the head-to-head table read from the measuring phases' files, what each phase cost, and report.html
opened in headless Chromium with its filters driven through the address.

The end-to-end fixture runs the planted model (tests/planted.py) through phases 0 to 4.9 with hand-made directions and
planted adapters: the incorrect SAE latent breaks every passable task in 4.8, and the planted LoRA adapter at c = -1
breaks every passable task in 4.9, so the table's corruption cells have known values."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import pytest

import run
from common.interventions import save_interventions
from common.resources import CostMeter
from common.steered_runs import endpoint_rates
from phase5.markdown import CHOOSES_NOTHING, markdown
from phase5.report import _changed, markdown_html
from phase5.table import Sources, head_to_head, sweep_outcomes
from tests.planted import planted_args, write_hand_made_directions, write_planted_adapters, write_tasks

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# CI sets PVA_REQUIRE_CHROMIUM, so that a missing browser fails the report's tests there instead of skipping them
NO_BROWSER = CHROMIUM is None and os.environ.get("PVA_REQUIRE_CHROMIUM") != "1"


def test_the_cost_meter_records_wall_time_and_the_peak_memory_of_its_own_phase():
    before = np.ones(40_000_000)  # 305 MiB resident before the phase starts, freed once it has
    before_peak = CostMeter().record()["peak_resident_mib"]
    del before
    meter = CostMeter()
    quiet = meter.record()
    if quiet["peak_resident_scope"] == "phase":  # Linux: the high-water mark was reset (else: the process's peak)
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


def _evaluation_row(kind: str, position: str, score: str, auroc: float, best: bool = False) -> dict:
    gain = {"baseline": "program_tokens", "difference": auroc - 0.7, "low": auroc - 0.8, "high": auroc - 0.6}
    declared = {"baseline": "confidence_and_length", "difference": auroc - 0.9, "low": auroc - 1.0, "high": auroc - 0.8}
    return {"kind": kind, "position": position, "score": score, "predicts": "pass", "is_best_baseline": best,
            "validation": {"auroc": auroc, "low": auroc - 0.1, "high": auroc + 0.05, "n_positive": 10,
                           "n_negative": 30},
            "within_task": {"auroc": 0.6, "low": 0.4, "high": 0.8, "n_pairs": 12},
            "over_best_baseline": gain if kind == "score" else None,
            "over_declared": declared if kind == "score" else None}


def test_each_row_reads_its_score_at_the_steering_position_and_a_probability_gets_brier_beside_no_skill():
    evaluation = {"best_baseline": "program_tokens", "counts": {}, "table": [
        _evaluation_row("baseline", "-", "program_tokens", 0.70, best=True),
        _evaluation_row("baseline", "-", "confidence_and_length", 0.90),
        _evaluation_row("score", "last_prompt", "mean_difference: last_prompt/mean_difference/layer_5", 0.55),
        _evaluation_row("score", "code_last", "mean_difference: code_last/mean_difference/layer_5", 0.81),
        _evaluation_row("score", "code_last", "paired_pca: code_last/paired_pca/layer_5", 0.66),
        _evaluation_row("score", "code_last", "contrastive_own_pca: code_last/contrastive_own_pca/layer_5", 0.62)]}
    calibration = {"position": "code_last", "layer": 5, "predictors": {"dictionary_confidence": {
        "n_programs": 40, "n_passing": 10, "auroc": {"value": 0.7, "low": 0.6, "high": 0.8},
        "brier": {"value": 0.15, "low": 0.1, "high": 0.2}, "ece": {"value": 0.05, "low": 0.01, "high": 0.09},
        "within_task_auroc": {"auroc": 0.5, "low": 0.3, "high": 0.7, "n_pairs": 12, "n_tasks_with_both_classes": 3}}},
        "confidence_minus": {"program_mean_logprob": {"auroc": {"difference": -0.1, "low": -0.2, "high": 0.0}},
                             "confidence_and_length": {"auroc": {"difference": -0.2, "low": -0.3, "high": -0.1}}}}
    rate = {"successes": 1, "trials": 4, "rate": 0.25, "low": 0.05, "high": 0.7}
    arm = {"arm": "x", "minus_arm": "x/minus_alpha", "level": 0.1, "alpha": 3.0, "chosen_by": "rule",
           "correction": rate, "preservation": rate, "corruption": rate, "valid_code_rate": rate}
    steering = {"position": "code_last", "layer": 5, "baseline": {"n_tasks": 4, "n_passing": 2},
                "methods": {"mean_difference": {"correct": arm}, "self_steering": {"correct": arm}},
                "primary": {"kv_cache_mutant/correction": {"p": 1.0, "holm_p": 1.0, "ran": False}},
                "alpha_0": {"n_problems": 4, "correction": rate, "preservation": rate,
                                           "corruption": rate, "valid_code_rate": rate}}
    sources = Sources(evaluation, calibration, None, steering,
                      pd.DataFrame({"arm": ["x", "alpha_0"], "generation_s": [0.5, 0.25]}),
                      {"no_adapter_reason": "too few pairs"}, None, {}, {"2.6": {"wall_s": 2.0,
                                                                                   "peak_resident_mib": 500.0}})
    rows = {row["name"]: row for row in head_to_head(sources)}
    assert list(rows) == ["mean_difference", "kv_cache_mutant", "self_steering", "alpha_0", "3.8/paired_pca",
                          "3.8/contrastive_own_pca", "baseline/program_tokens",
                          "baseline/confidence_and_length"]  # no 4.9 rows: none swept
    mean_difference = rows["mean_difference"]["detection"]
    assert mean_difference["auroc"]["value"] == 0.81  # code_last, where 4.8 steered; not last_prompt's 0.55
    assert mean_difference["over_comparison_baseline"]["baseline"] == "program_tokens"
    assert mean_difference["over_declared_baseline"]["value"] == pytest.approx(0.81 - 0.9)
    assert mean_difference["brier"] is None and mean_difference["within_task_auroc"]["n_pairs"] == 12
    confidence = rows["self_steering"]["detection"]
    assert confidence["brier"]["value"] == 0.15 and confidence["brier_no_skill"] == pytest.approx(0.25 * 0.75)
    assert confidence["over_declared_baseline"] == {"baseline": "confidence_and_length", "measure": "AUROC difference",
                                                    "value": -0.2, "low": -0.3, "high": -0.1}
    assert rows["mean_difference"]["cost"]["making_s"] == 2.0 and rows["self_steering"]["cost"]["making_s"] is None
    assert rows["mean_difference"]["cost"]["seconds_per_steered_program"] == {"mean": 0.5, "n_programs": 1}
    text = markdown({"notes": [], "rows": list(rows.values())})
    assert "0.150 [0.100, 0.200] (no skill 0.188)" in text
    assert "0.500 (12 pairs in 3 tasks: too few for an interval)" in text
    # declared, calibrated at no level it runs at: a row that says so, its endpoint counted as p = 1
    never_ran = rows["kv_cache_mutant"]["steering"]
    assert never_ran["correction"] is None and never_ran["n_tasks"] == 0
    assert "steering_peak_mib" not in rows["kv_cache_mutant"]["cost"]  # it steered nothing: no steering cost
    assert "did not run: phase 4.5 calibrated it at no level to run" in text
    assert "correction 1 (did not run: p = 1)" in text
    assert "-0.090 [-0.190, +0.010] over confidence_and_length" in text


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
    versus = latent["steering"]["versus_controls"]["corruption"]
    assert versus["controls_at_or_above"] == 0 and versus["n_controls"] == analysis["n_controls"]["0.3"]
    assert versus["target"]["successes"] == versus["target"]["trials"] > 0 and versus["controls_mean_rate"] == 0
    assert latent["steering"]["disruption"]["incorrect"]["level"] == 0.3
    assert latent["detection"] == {"reason": "phase 3.8 has no sae_correct_latent score at code_last"}  # no SAE here
    family = next(r for r in evaluation["table"] if r["kind"] == "score" and r["score"].startswith("mean_difference"))
    detection = rows["mean_difference"]["detection"]
    assert detection["auroc"]["value"] == pytest.approx(family["validation"]["auroc"])
    assert detection["source"] == f"3.8 {family['score']} at code_last" and detection["brier"] is None
    # the correct class reached no level: its primary endpoints did not run and count as p = 1 in 4.8's Holm family
    assert latent["steering"]["primary"] == {"correction": {"p": 1.0, "holm_p": 1.0, "ran": False},
                                             "preservation": {"p": 1.0, "holm_p": 1.0, "ran": False}}
    timed = latent["cost"]["seconds_per_steered_program"]
    steered = pd.read_parquet(data_dir / "phase4_8" / "steered_results.parquet")
    assert timed["n_programs"] == steered["arm"].str.startswith("sae_latent/").sum() and timed["mean"] > 0
    assert latent["cost"]["making_s"] is None  # its phases were hand-made: no recorded cost, none invented
    assert latent["cost"]["steering_peak_mib"] > 0  # phase 4.8 ran: its manifest records its peak

    lora = rows["4.9/lora"]
    assert lora["steering"]["corruption"]["successes"] == lora["steering"]["corruption"]["trials"] > 0
    assert lora["steering"]["preservation"]["successes"] == lora["steering"]["preservation"]["trials"]
    assert lora["cost"]["own_training_s"] == 3.0 and lora["cost"]["making_s"] is None  # 2.9 was hand-made
    assert rows["4.9/prompting"]["cost"]["making_s"] == 0.0
    assert set(rows["4.9/svd_rotation"]["steering"]["primary"]) == {"plus_vs_unsteered", "minus_vs_unsteered"}
    assert set(lora["steering"]["disruption"]["delta_nll"]) == {"+1", "-1"}
    assert rows["alpha_0"]["steering"]["correction"]["successes"] == 0  # no flips from nothing

    baselines = [r for r in evaluation["table"] if r["kind"] == "baseline"]
    assert [n for n in rows if rows[n]["kind"] == "baseline"] == [f"baseline/{r['score']}" for r in baselines]
    best = rows[f"baseline/{evaluation['best_baseline']}"]
    assert "(chosen on hyperparams)" in best["title"] and best["detection"]["brier"] is None  # a score: no Brier
    markdown = (data_dir / "phase5" / "head_to_head.md").read_text()
    assert CHOOSES_NOTHING in markdown and "## Steering (validation split)" in markdown
    assert (data_dir / "phase5" / "head_to_head.png").read_bytes().startswith(b"\x89PNG")
    manifest = json.loads((data_dir / "phase5" / "phase_output.json").read_text())
    assert manifest["cost"]["wall_s"] >= 0 and "report.html" in manifest["outputs"]


def test_without_an_adapter_phase_5_still_writes_its_table_and_report_with_no_adapter_rows(reported_run, tmp_path,
                                                                                         planted_model_dir: Path):
    """2.9 trains nothing when there are too few pairs; 4.9 then writes its summary alone, and phase 5 must read
    that as "no adapter rows", in the table and in the report's viewer alike."""
    data_dir = tmp_path / "run"
    shutil.copytree(reported_run, data_dir)
    args = [*planted_args(planted_model_dir, reported_run / "tasks.json"), "--set", "adapter_eval_tasks=5"]
    save_interventions(data_dir / "phase2_9" / "adapters.safetensors", [])  # what 2.9 writes when it trains none
    (data_dir / "phase2_9" / "phase_2_9_summary.json").write_text(json.dumps({"no_adapter_reason": "3 pairs",
                                                                               "adapters": {}}))
    assert run.main(["phase", "4.9", "--data-dir", str(data_dir), *args]) == 0
    assert not (data_dir / "phase4_9" / "sweep_rows.parquet").exists()  # the earlier run's rows are gone
    shutil.copy(reported_run / "phase4_9" / "sweep_rows.parquet", data_dir / "phase4_9")  # a stray one: not read
    assert run.main(["phase", "5", "--data-dir", str(data_dir), *args]) == 0
    rows = _rows(data_dir)
    assert [n for n in rows if rows[n]["kind"] == "adapter arm"] == [] and "sae_latent" in rows
    table = json.loads((data_dir / "phase5" / "head_to_head.json").read_text())
    assert "Steering, phase 4.9: no adapter rows (phase 2.9 trained none (3 pairs))." in table["notes"]
    report = (data_dir / "phase5" / "report.html").read_text()
    assert '"phase":"4.8"' in report and '"phase":"4.9"' not in report


def _dom(report: Path, **filters: str) -> str:
    assert CHROMIUM, "Debian's chromium is not installed (setup.sh installs it as root)"
    url = report.as_uri() + ("#" + urlencode(filters) if filters else "")
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--virtual-time-budget=5000", "--dump-dom", url], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _cards(dom: str) -> list[str]:
    return re.findall(r'<article class="card (outcome-[a-z-]+)">', dom)


@pytest.mark.skipif(NO_BROWSER, reason="Debian's chromium is not installed (setup.sh installs it as root)")
def test_the_report_opens_in_headless_chromium_and_its_filters_pick_the_programs(reported_run):
    data_dir = reported_run
    report = data_dir / "phase5" / "report.html"
    steered = pd.read_parquet(data_dir / "phase4_8" / "steered_results.parquet")
    sweep = pd.read_parquet(data_dir / "phase4_9" / "sweep_rows.parquet")

    everything = _dom(report)
    assert "Every method head to head" in everything and "AUROC [95% CI]" in everything
    assert everything.count('src="data:image/png;base64,') >= 4  # phase 5's figure and the phases' own
    assert len(_cards(everything)) == min(100, len(re.findall(r'"phase":"4\.[589]"', report.read_text())))

    broken = _dom(report, phase="4.8", outcome="pass->fail")
    method_arms = steered[steered["arm"].str.startswith(("sae_latent/", "mean_difference/"))]
    n_broken = int((method_arms["baseline_passed"] & ~method_arms["steered_passed"]).sum())
    assert n_broken > 0 and _cards(broken) == ["outcome-pass-fail"] * n_broken
    assert re.search(r'<span class="line removed">11111111</span>', broken)  # the diff: "1"s out, "x"s in
    assert re.search(r'<span class="line added">xxxxxxxx</span>', broken)
    badges = '<span class="badge pass">pass</span><span class="arrow">→</span><span class="badge fail">fail</span>'
    assert badges in broken
    assert f"showing {n_broken} of {n_broken} matching programs" in broken

    lora = _dom(report, phase="4.9", method="4.9/lora", coefficient="c = -1")
    n_lora = int(((sweep["arm"] == "lora") & (sweep["coefficient"] == -1.0)).sum())
    assert len(_cards(lora)) == n_lora == 5 and "outcome-fail-pass" not in _cards(lora)
    assert '<option value="c = -1">c = -1</option>' in lora


@pytest.mark.skipif(NO_BROWSER, reason="Debian's chromium is not installed (setup.sh installs it as root)")
def test_choosing_in_the_report_filters_the_programs_and_writes_the_choice_into_the_address(reported_run, tmp_path):
    """What a person does: pick a value in a filter. A script appended to a copy of the report picks 4.9 and the
    incorrect direction the way a click would (a change event), then records the address it left."""
    report = (reported_run / "phase5" / "report.html").read_text()
    choose = ('<script>for (const [name, value] of [["phase", "4.9"], ["direction", "incorrect"]]) {'
              'const select = document.getElementById("filter-" + name); select.value = value;'
              'select.dispatchEvent(new Event("change")); }'
              'document.body.setAttribute("data-address", location.hash);</script></body>')
    copy = tmp_path / "report.html"
    copy.write_text(report.replace("</body>", choose))
    dom = _dom(copy)
    sweep = pd.read_parquet(reported_run / "phase4_9" / "sweep_rows.parquet")
    n_negative = int(((sweep["arm"] != "unsteered") & (sweep["coefficient"] < 0)).sum())
    assert 'data-address="#phase=4.9&amp;direction=incorrect"' in dom
    assert len(_cards(dom)) == min(100, n_negative) and f"of {n_negative} matching programs" in dom
