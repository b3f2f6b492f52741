"""Phase plumbing: atomic writes, manifests (`phase_output.json`) and discovery of upstream outputs.

Phases talk only through files. A phase's folder is trusted only once its manifest exists; the
manifest is written last and atomically, so a killed phase never looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from common.config import Config
from common.errors import PipelineError
from common.phases import PHASES, PhaseSpec, get_phase

MANIFEST_NAME = "phase_output.json"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block finishes.

    The temporary file is created with mode 0666 so the kernel applies the umask, as a plain `open` would
    (mkstemp's 0600 would make every report unreadable to a colleague); replacing a file keeps that file's mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        if path.exists():
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_json(data: Any, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def load_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def phase_dir(config: Config, phase_id: str) -> Path:
    return config.data_path / get_phase(phase_id).folder


def manifest_path(data_dir: str | Path, phase_id: str) -> Path:
    return Path(data_dir) / get_phase(phase_id).folder / MANIFEST_NAME


def discover_latest_phase_output(phase_id: str, data_dir: str | Path = "data") -> Path:
    """Path of the manifest of `phase_id`'s finished output; a clear error naming the command if absent."""
    spec = get_phase(phase_id)
    path = manifest_path(data_dir, spec.id)
    if not path.is_file():
        data_option = "" if Path(data_dir) == Path("data") else f" --data-dir {data_dir}"
        raise PipelineError(f"phase {spec.id} ({spec.title}) has no finished output in {path.parent}: "
                            f"run `{spec.command}{data_option}` first")
    return path


def upstream_inputs(config: Config, spec: PhaseSpec) -> dict[str, dict[str, str]]:
    """Manifest path and hash of each upstream phase, checked before the phase starts any work."""
    inputs = {}
    for upstream_id in spec.upstream:
        path = discover_latest_phase_output(upstream_id, config.data_dir)
        inputs[upstream_id] = {"manifest": str(path), "sha256": sha256_file(path)}
    return inputs


def write_manifest(config: Config, spec: PhaseSpec, inputs: dict[str, dict[str, str]],
                   outputs: list[Path], extra: dict[str, Any] | None = None) -> Path:
    folder = phase_dir(config, spec.id)
    manifest = {
        "phase": spec.id,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "inputs": inputs,
        "outputs": sorted(str(Path(p).relative_to(folder)) for p in outputs),
    }
    if extra:
        manifest.update(extra)
    path = folder / MANIFEST_NAME
    save_json(manifest, path)
    return path


def phase_status(config: Config, spec: PhaseSpec, _seen: dict[str, tuple[str, str]] | None = None
                 ) -> tuple[str, str]:
    """("done" | "missing" | "stale", reason) of one phase against the current config and upstream."""
    seen = {} if _seen is None else _seen
    if spec.id in seen:
        return seen[spec.id]
    path = manifest_path(config.data_dir, spec.id)
    if not path.is_file():
        result = ("missing", "no output yet")
    else:
        result = _staleness(config, spec, load_json(path), seen)
    seen[spec.id] = result
    return result


def _staleness(config: Config, spec: PhaseSpec, manifest: dict[str, Any],
               seen: dict[str, tuple[str, str]]) -> tuple[str, str]:
    recorded = manifest.get("config", {})
    current = config.to_dict()
    changed = [key for key in spec.config_keys if recorded.get(key) != current.get(key)]
    if changed:
        differences = ", ".join(f"{k} {recorded.get(k)!r} -> {current.get(k)!r}" for k in changed)
        return "stale", "config changed: " + differences
    for upstream_id in spec.upstream:
        upstream = get_phase(upstream_id)
        state, _ = phase_status(config, upstream, seen)
        if state != "done":
            return "stale", f"upstream phase {upstream_id} is {state}"
        current_hash = sha256_file(manifest_path(config.data_dir, upstream_id))
        if manifest.get("inputs", {}).get(upstream_id, {}).get("sha256") != current_hash:
            return "stale", f"upstream phase {upstream_id} was rerun since"
    return "done", manifest.get("created_at", "")


def all_phase_statuses(config: Config) -> list[tuple[PhaseSpec, str, str]]:
    seen: dict[str, tuple[str, str]] = {}
    return [(spec, *phase_status(config, spec, seen)) for spec in PHASES]
