"""Phases 2.9 and 4.9: the LoRA baseline's weight as an intervention, PEFT's adapter exported faithfully, seed 004's
objective moving held-out separation the trained way, the random control's norms, the sweep's statistics on planted
outcomes, and phase 4.9 end to end on the planted model with a planted adapter whose -c breaks passable tasks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import run
from common.generation_job import WorkItem, request_for
from common.interventions import LowRankAdapter, load_interventions, save_interventions
from common.svd_adapter import LowRankWeight, linear_at
from common.prompt_utils import PromptBuilder
from phase2_9.trainables import LoRATrainable, SVDTrainable, same_norm_random
from common.config import Config
from common.phases import get_phase
from common.utils import write_manifest
from common.contrastive_pairs import ContrastivePair, held_out_tasks
from common.program_pass import answer_text, record_programs
from phase2_9.runner import split_pairs
from phase2_9.training import AdapterTraining, Side, held_out, held_out_summary, read, reference, sides, train
from phase4_9.analysis import arm_summary, effect_difference
from phase4_9.runner import CAREFUL, QUICK
from tests.planted import planted_args, write_hand_made_directions, write_planted_adapters, write_tasks

SITES = [(layer, path) for layer in (1, 2) for path in ("self_attn.v_proj", "mlp.up_proj", "mlp.down_proj")]


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def test_a_lora_weight_at_zero_is_the_base_model_its_hook_adds_c_times_the_dense_change_and_it_reloads_by_kind(
        tiny_model, tmp_path: Path):
    model, tokenizer = tiny_model
    ids = tokenizer("def f(x):\n    return x + 1")["input_ids"]
    generator = torch.Generator().manual_seed(0)
    weight = LowRankWeight(1, "mlp.up_proj", torch.randn(64, 3, generator=generator),
                           torch.randn(128, 3, generator=generator), 0.5)
    adapter = LowRankAdapter("test/lora", (weight,), 1.0, {"source": "test"})
    base = _logits(model, ids)
    with adapter.at(0.0).prefill_applied(model):
        assert torch.equal(_logits(model, ids), base)
    module = linear_at(model, 1, "mlp.up_proj")
    original = module.weight.detach().clone()
    with torch.no_grad():
        module.weight += weight.weight_at(-0.7)
    dense = _logits(model, ids)
    with torch.no_grad():
        module.weight.copy_(original)
    with adapter.at(-0.7).prefill_applied(model):
        assert torch.allclose(_logits(model, ids), dense, atol=1e-4)
    save_interventions(tmp_path / "a.safetensors", [adapter.at(-0.7)])
    (loaded,) = load_interventions(tmp_path / "a.safetensors")
    assert isinstance(loaded, LowRankAdapter) and loaded.label == adapter.at(-0.7).label
    assert loaded.provenance == {"source": "test"}


def test_the_peft_baseline_exports_to_the_intervention_that_reproduces_it_and_closing_restores_the_base_model(
        tiny_model):
    model, tokenizer = tiny_model
    ids = tokenizer("def g(y):\n    return y * 2")["input_ids"]
    base = _logits(model, ids)
    lora = LoRATrainable(model, SITES, rank=2, seed=0)
    try:
        assert torch.equal(_logits(model, ids), base)  # B starts at zero, and outside `applied` the scale is 0
        with torch.no_grad():
            for parameter in lora.parameters():
                parameter.normal_(0, 0.3)
        assert torch.allclose(_logits(model, ids), base)  # scale 0: still the base model
        with lora.applied(0.6):
            peft_logits = _logits(model, ids)
        exported = lora.export("adapter/lora", {})
    finally:
        lora.close()
    assert not torch.allclose(peft_logits, base, atol=1e-3)
    assert all(type(linear_at(model, layer, path)) is torch.nn.Linear for layer, path in SITES)
    assert torch.equal(_logits(model, ids), base)
    with exported.at(0.6).prefill_applied(model):
        assert torch.allclose(_logits(model, ids), peft_logits, atol=1e-4)


def _planted_pairs(tokenizer, n_pairs: int, seed: int) -> tuple[np.ndarray, list[Side]]:
    """Pairs of a shared random prompt of 12 tokens and programs of 10: the passing side's drawn from one range of
    the vocabulary, the failing side's from another, so a separation learnt on some pairs can hold on others."""
    rng = np.random.default_rng(seed)
    sides = []
    for _ in range(n_pairs):
        prompt = list(rng.choice(np.arange(100, 2000), 12))
        for vocabulary in (np.arange(2000, 2400), np.arange(3000, 3400)):
            sides.append(Side(prompt + list(rng.choice(vocabulary, 10)), np.arange(12, 22)))
    return np.arange(2 * n_pairs).reshape(-1, 2), sides


@pytest.mark.parametrize("kind", ["svd", "lora"])
def test_training_moves_separation_up_at_plus_one_against_minus_one(tiny_model, kind: str):
    """On the pairs it trains on (whether it carries to other pairs is the real model's question: phase 2.9 reports
    it on held-out tasks); a sign error anywhere in the objective would move the spread the other way."""
    model, tokenizer = tiny_model
    model.requires_grad_(False)
    pairs, sides = _planted_pairs(tokenizer, 16, seed=1)
    tasks = np.arange(16)
    training = AdapterTraining(loss_layer=3, loss_tokens=4, coherence_nats=5.0, coherence_weight=1.0, lr=0.05,
                               batch_pairs=4, max_steps=30, time_budget_s=600, seed=0)
    direction, scale = reference(model, pairs, sides, training)
    trainable = (SVDTrainable(model, SITES, rank=8, rotate_u=False, seed=0) if kind == "svd"
                 else LoRATrainable(model, SITES, rank=8, seed=0))

    def measured() -> dict:
        return held_out_summary({c: held_out(model, trainable.applied(c), pairs, sides, direction, scale, training)
                                 for c in (-1.0, 0.0, 1.0)}, tasks, seed=0)

    try:
        before = measured()
        log = train(model, trainable, pairs, sides, direction, scale, training, "test")
        after = measured()
    finally:
        trainable.close()
    assert log.stopped_by == "max_steps" and len(log.steps) == 30
    assert abs(before["spread"]["mean"]) < 0.05
    assert after["spread"]["mean"] > 0.1 and after["spread"]["low"] > 0
    assert after["by_coefficient"]["0"]["separation"] == pytest.approx(before["by_coefficient"]["0"]["separation"])


def test_the_training_read_gives_the_nll_the_program_pass_gives(tiny_model):
    """The objective's per-token NLL (logits kept only over the programs' span, right padding) against phase 2.7's
    teacher-forced pass over the same texts: the guard against an off-by-one in either."""
    model, tokenizer = tiny_model
    builder = PromptBuilder("chat", tokenizer)
    problem = {"task_id": 1, "text": "Add one.", "test_list": ["assert f(1) == 2"]}
    outputs = ["```python\ndef f(x):\n    return x + 1\n```", "Here:\n```python\ndef f(x):\n    return 2\n```"]
    texts = [answer_text(builder.build(problem), output, problem) for output in outputs]
    recorded = record_programs(model, tokenizer, texts, [1], 2, builder.adds_special_tokens)
    training = AdapterTraining(3, 2, 0.5, 1.0, 0.01, 2, 1, 60, 0)
    with torch.no_grad():
        result = read(model, sides(tokenizer, texts, builder.adds_special_tokens), training)
    assert [-float(nll.mean()) for nll in result.nll] == pytest.approx(recorded.columns["program_mean_logprob"],
                                                                        abs=1e-4)


def test_the_adapters_hold_out_the_tasks_phase_2_7_held_out_whatever_kinds_they_train_on():
    pairs = [ContrastivePair(f"t{i % 30}", kind, "a", "b", "a", "b")
             for i, kind in enumerate(["equivalent"] * 30 + ["mutant"] * 30 + ["own"] * 12)]
    held_by_2_7 = {p.task_id for p, held in zip(pairs, held_out_tasks(np.array([p.task_id for p in pairs]), 42))
                   if held}
    for kinds in (["mutant", "own"], ["own"]):
        kept, fit, test = split_pairs(pairs, Config(adapter_pair_kinds=kinds, adapter_max_pairs=1000).validate())
        assert {kept[i].task_id for i in test} <= held_by_2_7
        assert not {kept[i].task_id for i in fit} & held_by_2_7 and {p.kind for p in kept} == set(kinds)


def test_the_time_budget_stops_training(tiny_model):
    model, tokenizer = tiny_model
    model.requires_grad_(False)
    pairs, sides = _planted_pairs(tokenizer, 4, seed=2)
    training = AdapterTraining(3, 4, 0.5, 1.0, 0.01, 2, max_steps=1000, time_budget_s=0.5, seed=0)
    direction, scale = reference(model, pairs, sides, training)
    log = train(model, SVDTrainable(model, SITES, 2, False, 0), pairs, sides, direction, scale, training, "test")
    assert log.stopped_by == "time_budget_s" and 0 < len(log.steps) < 1000


def test_the_random_control_has_the_trained_norms_and_other_generators(tiny_model):
    model, _ = tiny_model
    trainable = SVDTrainable(model, SITES, rank=4, rotate_u=True, seed=0)
    with torch.no_grad():
        for parameter in trainable.parameters():
            parameter.normal_(0, 0.5)
    trained = trainable.export("adapter/svd_rotation", {"source": "svd_rotation_adapter"})
    random = same_norm_random(trained, "adapter/random_same_norm", seed=1)
    for mine, theirs in zip(trained.weights, random.weights):
        for name in ("skew_v", "skew_u"):
            a, b = getattr(mine, name), getattr(theirs, name)
            assert float((b - b.T).norm()) == pytest.approx(float((a - a.T).norm()), rel=1e-5)
            assert not torch.allclose(a, b)
        assert float(theirs.log_scale.norm()) == pytest.approx(float(mine.log_scale.norm()), rel=1e-5)
        assert torch.equal(theirs.u, mine.u) and torch.equal(theirs.s, mine.s)
    assert random.provenance["matched_to"] == trained.label and random.label != trained.label


def test_the_sweep_statistics_on_planted_outcomes():
    coefficients = [-1.0, -0.5, 0.0, 0.5, 1.0]
    passing_counts = [2, 5, 8, 10, 12]  # of 20 tasks; each level's passing tasks contain the level below's
    passed = np.array([[task < n for task in range(20)] for n in passing_counts])
    rises = {c: {"mean": r} for c, r in zip(coefficients, [0.1, 0.05, 0.0, 0.1, 0.2])}
    summary = arm_summary(coefficients, passed, rises, seed=0)
    assert summary["effect"]["value"] == pytest.approx(0.5)
    assert summary["effect"]["low"] < 0.5 < summary["effect"]["high"]
    plus, minus = summary["plus_vs_unsteered"], summary["minus_vs_unsteered"]
    assert (plus["difference"], plus["tasks_gained"], plus["tasks_lost"]) == (pytest.approx(0.2), 4, 0)
    assert (minus["difference"], minus["tasks_gained"], minus["tasks_lost"]) == (pytest.approx(-0.3), 0, 6)
    assert plus["mcnemar_p"] == pytest.approx(2 * 0.5 ** 4) and minus["mcnemar_p"] == pytest.approx(2 * 0.5 ** 6)
    assert summary["rho"]["value"] == pytest.approx(1.0) and summary["rho"]["rho_all_levels"] == pytest.approx(1.0)
    stacked_c = np.repeat(coefficients, 20)
    assert summary["slope"]["value"] == pytest.approx(np.polyfit(stacked_c, passed.ravel().astype(float), 1)[0])
    assert summary["delta_nll"] == pytest.approx(0.2)  # the larger of the two ends
    gain = summary["normalized_gain"]
    assert gain["value"] == pytest.approx(100 * 0.5 * 1.0 / 1.2) and gain["low"] < gain["value"] <= gain["high"]

    backwards = arm_summary(coefficients, passed[::-1], rises, seed=0)
    assert backwards["rho"]["value"] == pytest.approx(-1.0) and backwards["normalized_gain"]["value"] == 0.0
    flat = arm_summary(coefficients, np.ones_like(passed), rises, seed=0)
    assert flat["rho"]["value"] is None and flat["normalized_gain"]["value"] == 0.0
    three = passed[[0, 2, 4]]
    assert effect_difference([-1, 0, 1], three, three, 0) == {"difference": 0.0, "low": 0.0, "high": 0.0}
    assert effect_difference([-1, 0, 1], three, three[::-1], 0)["difference"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def swept_run(tmp_path_factory, planted_model_dir: Path) -> tuple[Path, list[str]]:
    data_dir = tmp_path_factory.mktemp("swept")
    args = [*planted_args(planted_model_dir, write_tasks(data_dir)), "--set", "adapter_eval_tasks=5"]
    for phase in ("0", "0.1", "3.6"):
        assert run.main(["phase", phase, "--data-dir", str(data_dir), *args]) == 0
    write_hand_made_directions(data_dir)
    write_planted_adapters(data_dir, planted_model_dir)
    assert run.main(["phase", "4.9", "--data-dir", str(data_dir), *args]) == 0
    return data_dir, args


def test_phase_4_9_sweeps_every_arm_over_c_on_the_same_tasks_and_finds_the_planted_adapter(swept_run):
    data_dir, _ = swept_run
    out = data_dir / "phase4_9"
    summary = json.loads((out / "phase_4_9_summary.json").read_text())
    rows = pd.read_parquet(out / "sweep_rows.parquet")
    tasks = set(rows["task_id"])
    assert len(tasks) == summary["n_tasks"] == 5
    assert set(summary["arms"]) == {"svd_rotation", "lora", "random_same_norm", "mean_difference", "prompting"}
    for name in ("svd_rotation", "lora", "random_same_norm", "mean_difference"):
        assert sorted(rows.loc[rows["arm"] == name, "coefficient"].unique()) == [-1.0, -0.5, 0.5, 1.0]
        assert (rows[rows["arm"] == name].groupby("coefficient")["task_id"].apply(set) == tasks).all()
        assert "effect_minus_svd_rotation" in summary["arms"][name] or name == "svd_rotation"
    assert len(rows[rows["arm"] == "unsteered"]) == 5  # c = 0 generated once, shared
    assert sorted(rows.loc[rows["arm"] == "prompting", "coefficient"]) == [-1.0] * 5 + [1.0] * 5

    lora = summary["arms"]["lora"]
    passing = lora["by_coefficient"]["0"]["pass_rate"]["successes"]
    assert passing > 0
    assert lora["by_coefficient"]["-1"]["pass_rate"]["successes"] == 0  # the planted -c breaks every passable task
    assert lora["by_coefficient"]["1"]["pass_rate"]["successes"] == passing
    assert lora["effect"]["value"] == pytest.approx(passing / 5) and lora["rho"]["value"] > 0
    assert lora["normalized_gain"]["value"] > 0 and lora["minus_vs_unsteered"]["tasks_lost"] == passing
    assert lora["delta_nll"] > 1.0  # writing "x" where "1" is the program: a large NLL rise
    assert all(lora["by_coefficient"][c]["valid_code_rate"]["trials"] == 5 for c in ("-1", "0", "1"))
    assert set(summary["primary"]["holm"]) == {"svd_rotation/plus_vs_unsteered", "svd_rotation/minus_vs_unsteered"}
    assert all(summary["arms"]["prompting"]["by_coefficient"][c]["delta_nll"]["mean"] != 0.0 for c in ("-1", "1"))

    matching = summary["mean_difference_matching"]
    rises = dict(zip(map(float, matching["grid"]), matching["grid"].values()))
    nearest = min(rises, key=lambda alpha: abs(rises[alpha] - matching["target_delta_nll"]))
    assert abs(matching["matched_delta_nll"] - matching["target_delta_nll"]) <= abs(
        rises[nearest] - matching["target_delta_nll"]) + 1e-6  # no worse than the nearest grid point
    assert (out / "coefficient_sweep.png").stat().st_size > 0


def test_a_system_prompt_comes_before_the_task_and_is_a_condition_of_its_own(smollm_tokenizer_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    problem = {"task_id": 1, "text": "Add one.", "test_list": ["assert f(1) == 2"], "cyclomatic_complexity": 1,
               "_order": 0}
    plain = PromptBuilder("chat", tokenizer)
    careful = request_for(WorkItem(problem, 0, 0.0, system_prompt=CAREFUL), plain, seed=0).prompt
    assert careful.index(CAREFUL) < careful.index("Add one.") and CAREFUL not in plain.build(problem)
    assert PromptBuilder("base", tokenizer, QUICK).build(problem).startswith(f"# {QUICK}\nAdd one.")
    keys = {WorkItem(problem, 0, 0.0, system_prompt=text).key for text in ("", CAREFUL, QUICK)}
    assert len(keys) == 3 and WorkItem(problem, 0, 0.0).key == "1#0"
    weight = LowRankWeight(1, "mlp.up_proj", torch.ones(64, 1), torch.ones(128, 1), 1.0)
    steered = LowRankAdapter("test/lora", (weight,))
    assert WorkItem(problem, 0, 0.0, steered).key == f"{steered.label}|1#0"  # as every phase before this one keyed it
    with pytest.raises(ValueError, match="steered or prompted"):
        WorkItem(problem, 0, 0.0, steered, system_prompt=CAREFUL)


def test_phase_4_9_without_an_adapter_writes_its_summary_alone_with_the_reason(tmp_path: Path,
                                                                               planted_model_dir: Path):
    """2.9 trains nothing when there are too few pairs; 4.9 then says so instead of stopping the pipeline, so that
    phase 5 can still write its table and report (without adapter rows)."""
    args = planted_args(planted_model_dir, write_tasks(tmp_path))
    for phase in ("0", "0.1"):
        assert run.main(["phase", phase, "--data-dir", str(tmp_path), *args]) == 0
    write_hand_made_directions(tmp_path)
    config = Config(data_dir=str(tmp_path)).validate()
    for phase_id in ("2.9", "3.6"):
        folder = tmp_path / get_phase(phase_id).folder
        folder.mkdir(exist_ok=True)
        if phase_id == "2.9":
            save_interventions(folder / "adapters.safetensors", [])
            (folder / "phase_2_9_summary.json").write_text(json.dumps({"no_adapter_reason": "3 pairs", "adapters": {}}))
        write_manifest(config, get_phase(phase_id), {}, [])
    assert run.main(["phase", "4.9", "--data-dir", str(tmp_path), *args]) == 0
    out = tmp_path / "phase4_9"
    assert json.loads((out / "phase_4_9_summary.json").read_text()) == {
        "no_adapter_reason": "phase 2.9 trained none (3 pairs)"}
    assert json.loads((out / "phase_output.json").read_text())["outputs"] == ["phase_4_9_summary.json"]
