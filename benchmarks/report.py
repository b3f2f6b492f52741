"""One place for what every benchmark does at the end: print one summary line, write the JSON."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from common.utils import save_json

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import torch

    return {"cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "gpu": torch.cuda.is_available()}


def report(name: str, summary: str, data: dict[str, Any]) -> Path:
    path = RESULTS_DIR / f"{name}.json"
    save_json({"benchmark": name, "summary": summary, "machine": machine(), **data}, path)
    print(f"{name}: {summary}  ({path})")
    return path
