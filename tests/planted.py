"""A tiny model whose output a planted direction flips deterministically, and the upstream files around it.

The planted model writes "1" while coordinate K of its residual stream is positive and "x" while it
is negative; every embedding carries +BIAS on K, so unsteered it writes "11111111" (a program that
runs). Steering along -e_K with alpha > BIAS makes it write "xxxxxxxx" (NameError). Tasks whose test
is `assert 2 + 2 == 4` therefore pass at baseline and fail when steered; tasks whose test is `assert 1 == 2`
fail whatever the model writes. The "incorrect" latent of our hand-made phase 2.5 output is -e_K.
Its multiple-choice twin writes " A" and " B" instead: questions whose answer is A pass unsteered and fail when
steered; questions whose answer is C fail whatever it writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from common.config import Config
from common.directions import SteeringDirection, save_directions
from common.interventions import KVCacheEdit, SelfSteering, save_interventions
from common.kv_vectors import save_vector
from common.phases import get_phase
from common.steering_dictionary import DICTIONARY_FILE, SteeringDictionary
from common.utils import save_json, write_manifest

K, BIAS, LAYER = 0, 10.0, 1
LEVELS, PREREGISTERED = "0.001,0.3", 0.1  # nats per token: a nudge that changes nothing, enough to flip; between
PASSABLE, IMPOSSIBLE = ["assert 2 + 2 == 4"], ["assert 1 == 2"]  # hold whenever the program runs; never


def save_planted_model(folder: Path, smollm_tokenizer_dir: Path, writes: tuple[str, str] = ("1", "x")) -> Path:
    """The model writes writes[0] while coordinate K is positive, writes[1] while it is negative."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    with torch.no_grad():
        model.model.embed_tokens.weight[:, K] = BIAS
        model.model.norm.weight.zero_()
        model.model.norm.weight[K] = 1.0
        model.lm_head.weight.zero_()
        for text, sign in zip(writes, (1.0, -1.0)):
            (token,) = tokenizer(text, add_special_tokens=False)["input_ids"]
            model.lm_head.weight[token, K] = sign
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_tasks(tmp_path: Path) -> Path:
    """Our own tasks: 10 passable and 6 impossible ones, of varied complexity."""
    records = []
    for i in range(16):
        branches = "".join(f"    if x == {j}:\n        return {j}\n" for j in range(i % 4))
        records.append({"task_id": 700 + i, "text": f"Write function number {i}.",
                        "code": f"def f{i}(x):\n{branches}    return x\n",
                        "test_list": PASSABLE if i % 8 < 5 else IMPOSSIBLE, "test_setup_code": "",
                        "challenge_test_list": []})
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(records))
    return path


def write_questions(tmp_path: Path, n_questions: int = 16) -> Path:
    """Our own multiple-choice questions in the MedQA layout: five in eight answered A (passable), the others C
    (impossible)."""
    records = [{"question": f"Question number {i}: which option?", "options": dict(zip("ABCD", "wxyz")),
                "answer_idx": "A" if i % 8 < 5 else "C", "meta_info": f"step{1 + i % 2}"} for i in range(n_questions)]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def planted_args(model_dir: Path, tasks: Path, dataset: str = "mbpp") -> list[str]:
    return ["--set", f"dataset={dataset}", "--set", f"data_file={tasks}", "--set", f"model_name={model_dir}",
            "--set", "layers=1,3", "--set", "max_new_tokens=8", "--set", "batch_size=4",
            "--set", "split_fractions=0.2,0.4,0.4", "--set", "samples_per_temperature=0",
            "--set", f"disruption_levels={LEVELS}", "--set", f"preregistered_level={PREREGISTERED}",
            "--set", "calibration_alphas=0.5,1,2,4,8,16,32,64,128,256", "--set", "disruption_programs=3",
            "--set", "controls_per_type=3", "--set", "selection_controls_per_type=2", "--set", "control_tasks=6",
            "--set", "min_problems_per_level=3", "--set", "methods=sae_latent,mean_difference",
            "--log-level", "WARNING"]


def _unit(index: int, sign: float = 1.0) -> torch.Tensor:
    vector = torch.zeros(64)
    vector[index] = sign
    return vector


def write_hand_made_directions(data_dir: Path, position: str = "code_last") -> None:
    """Phase 2.0, 2.5, 2.6, 2.7, 2.8 and 3.9 outputs: no SAE files, no contrastive directions, no KV-cache vector, no
    dictionary; +e_K
    prefers correct, -e_K incorrect; zero-discrimination latents orthogonal to e_K; the mean difference leans on e_K
    (cosine 0.71). All found at `position`."""
    config = Config(data_dir=str(data_dir)).validate()
    (data_dir / "phase2_0").mkdir(parents=True)
    (data_dir / "phase2_0" / "sae_sources.json").write_text("{}")
    write_manifest(config, get_phase("2.0"), {}, [data_dir / "phase2_0" / "sae_sources.json"])
    latents = [SteeringDirection(f"sae_latent/{kind}/layer_{LAYER}/latent_{i}", LAYER, _unit(K, sign), "sae_latent",
                                 {"prefers": kind, "rank": 1, "feature_idx": i, "separation_score": 0.5}, position)
               for i, (kind, sign) in enumerate((("correct", 1.0), ("incorrect", -1.0)))]
    latents += [SteeringDirection(f"zero_discrimination/control/layer_{LAYER}/latent_{j}", LAYER, _unit(j),
                                  "zero_discrimination", {"prefers": "control", "rank": j, "feature_idx": j}, position)
                for j in (5, 6, 7)]
    (data_dir / "phase2_5").mkdir(parents=True)
    save_directions(data_dir / "phase2_5" / "latent_directions.safetensors", latents)
    write_manifest(config, get_phase("2.5"), {}, [data_dir / "phase2_5" / "latent_directions.safetensors"])
    (data_dir / "phase2_6").mkdir(parents=True)
    save_directions(data_dir / "phase2_6" / "directions.safetensors",
                    [SteeringDirection(f"mean_difference/layer_{LAYER}", LAYER, (_unit(K) + _unit(9)) / 2 ** 0.5,
                                       "mean_difference", {}, position)])
    write_manifest(config, get_phase("2.6"), {}, [data_dir / "phase2_6" / "directions.safetensors"])
    (data_dir / "phase2_7").mkdir(parents=True)
    save_directions(data_dir / "phase2_7" / "directions.safetensors", [])
    write_manifest(config, get_phase("2.7"), {}, [data_dir / "phase2_7" / "directions.safetensors"])
    (data_dir / "phase2_8").mkdir(parents=True)
    (data_dir / "phase2_8" / "phase_2_8_summary.json").write_text("{}")  # no KV-cache vector
    write_manifest(config, get_phase("2.8"), {}, [data_dir / "phase2_8" / "phase_2_8_summary.json"])
    (data_dir / "phase3_9").mkdir(parents=True)
    (data_dir / "phase3_9" / "phase_3_9_summary.json").write_text("{}")  # no dictionary
    write_manifest(config, get_phase("3.9"), {}, [data_dir / "phase3_9" / "phase_3_9_summary.json"])


def write_planted_dictionary(data_dir: Path) -> None:
    """Phase 3.9 output: a dictionary of two means, +e_K and e_9, whose projection sends every prompt to +e_K (zero
    weights, bias e_K), so sharp routing gives s close to +e_K for every row: self-steering pushes K up, and its
    incorrect class (negated) down. Shuffled routing sends every row to e_9 instead; random dictionaries, anywhere."""
    dictionary = SteeringDictionary(LAYER, torch.stack([_unit(K), _unit(9)]), torch.zeros(64, 64), _unit(K),
                                    torch.zeros(64), torch.ones(64), 20.0)
    path = data_dir / "phase3_9" / DICTIONARY_FILE
    save_interventions(path, [SelfSteering("self_steering", dictionary, 1.0, "code_last")])
    write_manifest(Config(data_dir=str(data_dir)).validate(), get_phase("3.9"), {}, [path])


KV_ALPHAS = "0.5,8,128,1024,2048,4096,8192,16384,32768,65536,131072"  # the KV test's grid: one edited position
#                                                                          must outweigh BIAS


def write_planted_kv_vector(data_dir: Path, model_dir: Path) -> None:
    """Phase 2.8 output: a value edit at layer LAYER whose attention output lands on +e_K as nearly as the layer
    allows: the least-squares solution of (o_proj, with each kv head serving its query heads) @ delta = e_K. Any
    attention to the edited position pushes K up; the incorrect class (negated) pushes it down, and once the push
    outweighs BIAS the model writes "x" from the second token on. Random edits of the same norms spread over every
    coordinate instead, which the final norm turns into disruption without a flip."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir)
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    o_proj = model.model.layers[LAYER].self_attn.o_proj.weight.detach().double()  # [d_model, heads * head_dim]
    per_kv_head = o_proj.view(config.hidden_size, config.num_key_value_heads, -1, head_dim).sum(2)  # h // n_rep = g
    target = torch.zeros(config.hidden_size, dtype=torch.float64)
    target[K] = 1.0
    values = torch.linalg.pinv(per_kv_head.flatten(1)) @ target
    values = values.view(1, config.num_key_value_heads, head_dim).float()
    edit = KVCacheEdit("kv_mutant", (LAYER,), torch.zeros_like(values), values, 1.0, 0.0, 1.0,
                       {"source": "kv_cache_mutant", "phase": "2.8", "planted": True})
    outputs = save_vector(data_dir / "phase2_8", edit, [], {"planted": True}, {})
    write_manifest(Config(data_dir=str(data_dir)).validate(), get_phase("2.8"), {}, outputs)


def write_planted_adapters(data_dir: Path, model_dir: Path, lora_scale: float = 4.0) -> None:
    """Phase 2.9 output. The LoRA adapter is planted: on layer LAYER's v_proj it reads coordinate K (which BIAS makes
    the normed input's largest everywhere) and writes the values whose attention output lands on +e_K (as the KV
    vector does), so c > 0 pushes K up (the model still writes "1") and c = -1 pushes it below zero once
    lora_scale * |K input| outweighs BIAS (it writes "x": passable tasks fail). The SVD adapter has random generators
    large enough to change the model, and the random one its norms."""
    from transformers import LlamaForCausalLM

    from common.interventions import LowRankAdapter, SVDRotationAdapter
    from common.svd_adapter import LowRankWeight, split_weight
    from phase2_9.trainables import same_norm_random

    model = LlamaForCausalLM.from_pretrained(model_dir)
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    o_proj = model.model.layers[LAYER].self_attn.o_proj.weight.detach().double()
    per_kv_head = o_proj.view(config.hidden_size, config.num_key_value_heads, -1, head_dim).sum(2)
    target = torch.zeros(config.hidden_size, dtype=torch.float64)
    target[K] = 1.0
    values = (torch.linalg.pinv(per_kv_head.flatten(1)) @ target).float()
    lora = LowRankAdapter("adapter/lora", (LowRankWeight(LAYER, "self_attn.v_proj", _unit(K)[:, None],
                                                         values[:, None], lora_scale),), 1.0, {"planted": True})
    generator = torch.Generator().manual_seed(0)
    weights = []
    for layer, path in ((LAYER, "mlp.up_proj"), (LAYER + 1, "self_attn.q_proj")):
        fresh = split_weight(model, layer, path, rank=4, generator=generator)
        weights.append(type(fresh)(**{**fresh.__dict__, "skew_v": torch.randn(4, 4, generator=generator),
                                      "log_scale": 0.5 * torch.randn(4, generator=generator)}))
    svd = SVDRotationAdapter("adapter/svd_rotation", tuple(weights), 1.0, {"planted": True})
    folder = data_dir / "phase2_9"
    folder.mkdir(parents=True, exist_ok=True)
    save_interventions(folder / "adapters.safetensors",
                       [svd, same_norm_random(svd, "adapter/random_same_norm", 1), lora])
    trained = {"steps": 0, "stopped_by": "planted", "curve": [], "held_out": {}}
    save_json({"no_adapter_reason": None, "adapters": {"svd_rotation": {"training_s": 2.0, **trained},
                                                       "lora": {"training_s": 3.0, **trained}}},
              folder / "phase_2_9_summary.json")
    write_manifest(Config(data_dir=str(data_dir)).validate(), get_phase("2.9"), {},
                   [folder / "adapters.safetensors", folder / "phase_2_9_summary.json"])
