"""Phase 2.8s (seed 002's style vectors): the declared statistics, the OpenAI-compatible teacher against a server
on 127.0.0.1 (never the network), and the phase end to end on a tiny model."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from scipy import stats

import run
from common.errors import PipelineError
from common.kv_vectors import load_vector
from phase2_8s.runner import _effects
from phase2_8s.styles import HELD_OUT_QUESTIONS, NEUTRAL_PROMPT, QUESTIONS, RANDOM_EDITS, STYLES, numbered_steps
from phase2_8s.teacher import endpoint_answers

STEPS = "1. Look at the question.\n2. Think it through.\n3. Answer it."


@pytest.fixture
def teacher_server() -> Iterator[tuple[str, list[dict]]]:
    """A chat-completions endpoint that answers in numbered steps when the system prompt asks for steps, and in one
    word otherwise; it records every request body. A user message "fail" gets a 500."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append({"path": self.path, **body})
            if body["messages"][-1]["content"] == "fail":
                self.send_response(500)
                self.end_headers()
                return
            system = body["messages"][0]["content"]
            content = STEPS if "step by step" in system else "Yes."
            reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", received
    finally:
        server.shutdown()
        server.server_close()


def test_each_style_statistic_measures_what_it_names():
    assert numbered_steps(STEPS) == 3 and numbered_steps("Step 1: mix.\nStep 2) bake.\n**3.** eat") == 3
    assert numbered_steps("In 1984 there were 2. Then 3 more.") == 0  # numbers inside a line are not steps
    assert numbered_steps("10:30 the bus left.\n1984. A year.\n2023: another\n3.5 million") == 0  # nor numbers
    research = STYLES["researcher_style"].statistic
    assert research("The evidence suggests a factor; however more data") == pytest.approx(100 * 5 / 8)
    assert research("") == 0.0
    assert STYLES["creative_explorer"].statistic("Imagine a city of glass, perhaps") == pytest.approx(100 * 2 / 6)


def test_each_comparison_is_paired_by_question_with_a_t_interval():
    """Hand-made answers: steered adds a step to questions 0-3, one random edit adds one to question 0 and the other
    to question 1 (their mean per question: 0.5, 0.5, 0, 0), prompting adds two everywhere."""
    one, two = "1. a", "1. a\n2. b"
    answers = {"unsteered": [[""] * 4], "steered": [[one] * 4], "random_edit": [[one, "", "", ""], ["", one, "", ""]],
               "prompted": [[two] * 4]}
    effects = _effects(STYLES["step_by_step_reasoning"], answers)
    assert effects["mean"] == {"unsteered": 0.0, "steered": 1.0, "random_edit": 0.25, "prompted": 2.0}
    assert effects["n_random_edits"] == 2
    versus_random = effects["differences"]["steered_minus_random"]  # per question 0.5, 0.5, 1, 1
    half = stats.t.ppf(0.975, 3) * np.std([0.5, 0.5, 1, 1], ddof=1) / 2
    assert versus_random["mean_difference"] == pytest.approx(0.75)
    assert (versus_random["low"], versus_random["high"]) == pytest.approx((0.75 - half, 0.75 + half))
    assert (versus_random["n_higher"], versus_random["n_lower"]) == (4, 0)
    assert effects["differences"]["prompted"]["low"] == effects["differences"]["prompted"]["high"] == 2.0


def test_the_teacher_asks_an_openai_compatible_endpoint_and_says_so_in_one_line_when_it_fails(teacher_server):
    url, received = teacher_server
    style = STYLES["step_by_step_reasoning"]
    assert endpoint_answers(url, "gpt-4", style.prompt, ["Why?", "How?"], 50) == [STEPS, STEPS]
    assert endpoint_answers(url, "gpt-4", NEUTRAL_PROMPT, ["Why?"], 50) == ["Yes."]
    first = received[0]
    assert first["path"] == "/v1/chat/completions" and first["model"] == "gpt-4" and first["temperature"] == 0
    assert first["max_tokens"] == 50 and first["messages"] == [{"role": "system", "content": style.prompt},
                                                               {"role": "user", "content": "Why?"}]
    with pytest.raises(PipelineError, match="no chat completion") as caught:
        endpoint_answers(url, "gpt-4", NEUTRAL_PROMPT, ["fail"], 50)
    assert "\n" not in str(caught.value)


def test_the_phase_builds_style_vectors_from_the_teachers_answers_and_measures_them_on_held_out_questions(
        tmp_path: Path, tiny_model_dir: Path, teacher_server):
    url, received = teacher_server
    args = ["--data-dir", str(tmp_path), "--set", f"model_name={tiny_model_dir}", "--set", f"teacher_url={url}",
            "--set", "style_names=step_by_step_reasoning,creative_explorer", "--set", "style_max_tokens=6",
            "--set", "calibration_alphas=1,10,100,1000", "--set", "style_disruption=0.00001",  # a random tiny model
            "--log-level", "WARNING"]  # barely moves its near-uniform next-token distribution
    assert run.main(["phase", "2.8s", *args]) == 0
    n_building = len(QUESTIONS) - HELD_OUT_QUESTIONS
    assert len(received) == 3 * n_building  # the neutral answers once, each style's once
    out = tmp_path / "phase2_8s"
    summary = json.loads((out / "phase_2_8s_summary.json").read_text())
    assert (summary["n_building"], summary["n_held_out"], summary["teacher"]) == (n_building, HELD_OUT_QUESTIONS, url)
    steps = summary["styles"]["step_by_step_reasoning"]
    assert steps["teacher_statistic_mean"] == {"styled": 3.0, "neutral": 0.0} and steps["n_pairs"] == n_building
    pairs = [json.loads(line) for line in (out / "datasets" / "step_by_step_reasoning_pairs.jsonl").read_text()
             .splitlines()]
    assert len(pairs) == n_building and {(p["positive"], p["negative"]) for p in pairs} == {(STEPS, "Yes.")}
    assert not {p["question"] for p in pairs} & set(json.loads((out / "held_out_answers.json").read_text())
                                                    ["questions"])  # held-out questions never build a vector
    edit = load_vector(out, "step_by_step_reasoning")
    assert edit.layers == (1, 2) and float(edit.value_deltas.norm()) > 0
    template = json.loads((out / "steering_vectors" / "step_by_step_reasoning_template.json").read_text())
    assert template["positive_prompt"] == STYLES["step_by_step_reasoning"].prompt
    held = steps["held_out"]
    assert steps["alpha"] is not None and held["n_random_edits"] == len([a for a in steps["random_edit_alphas"] if a])
    assert set(held["mean"]) == {"unsteered", "steered", "random_edit", "prompted"} and held["n_random_edits"] >= 1
    assert set(held["differences"]) == {"steered", "random_edit", "prompted", "steered_minus_random"}
    for effect in held["differences"].values():
        assert effect["n_questions"] == HELD_OUT_QUESTIONS
        assert effect["low"] <= effect["mean_difference"] <= effect["high"] or effect["low"] != effect["low"]  # NaN
    answers = json.loads((out / "held_out_answers.json").read_text())["answers"]["step_by_step_reasoning"]
    assert [len(a) for a in answers["random_edit"]] == [HELD_OUT_QUESTIONS] * held["n_random_edits"]
    assert held["n_random_edits"] <= RANDOM_EDITS
    differences = held["differences"]
    assert differences["steered_minus_random"]["mean_difference"] == pytest.approx(
        differences["steered"]["mean_difference"] - differences["random_edit"]["mean_difference"])
    assert (out / "style_effects.png").read_bytes().startswith(b"\x89PNG")
    # the server answers "Yes." whatever the creative prompt asks: no contrast, so no vector, and it says so
    assert "alike" in summary["styles"]["creative_explorer"]["skipped"]
    assert load_vector(out, "creative_explorer") is None


def test_an_unknown_style_is_one_error_line_before_anything_is_written(tmp_path: Path, capsys):
    assert run.main(["phase", "2.8s", "--data-dir", str(tmp_path), "--set", "style_names=poetic"]) == 2
    assert "unknown style poetic" in capsys.readouterr().err
    assert not (tmp_path / "phase2_8s").exists()
