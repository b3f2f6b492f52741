"""A local code corpus for SAE training and evaluation: the Python standard library's own source.

It needs no download and is real, varied Python. Files are split into a training part and a
held-out part by a stable hash of their relative path, so the split never depends on the order
the file system lists them in, and held-out files are never seen in training. Text is cut into
fixed windows that each start with the tokenizer's BOS token: position 0 of every window is the
attention sink (residual norm ~100x the rest), which training and evaluation leave out.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

HELD_OUT_BUCKETS = 10  # one file in ten is held out
_SKIPPED_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "__pycache__"}


@dataclass(frozen=True)
class CorpusFile:
    relative_path: str
    text: str

    @property
    def held_out(self) -> bool:
        digest = hashlib.sha1(self.relative_path.encode()).digest()
        return digest[0] % HELD_OUT_BUCKETS == 0


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> Iterator[CorpusFile]:
    """Every readable .py file under the standard library, tests and vendored packages skipped, in hash order.

    Hash order mixes modules from all packages, so a token budget takes a varied sample
    rather than the alphabetically first packages.
    """
    root = root or stdlib_root()
    paths = [p for p in root.rglob("*.py") if not _SKIPPED_DIRS.intersection(p.relative_to(root).parts[:-1])]
    keyed = sorted((hashlib.sha1(str(p.relative_to(root)).encode()).hexdigest(), p) for p in paths)
    for _, path in keyed:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if text.strip():
            yield CorpusFile(str(path.relative_to(root)), text)


def token_windows(texts: Iterable[str], tokenizer, context_tokens: int, budget_tokens: int) -> torch.Tensor:
    """[n_windows, context_tokens] token ids: BOS, then a stream of texts separated by EOS.

    Stops once the windows hold `budget_tokens` tokens after position 0 (the part that is used).
    """
    bos, eos = _bos_eos(tokenizer)
    body = context_tokens - 1
    n_windows = -(-budget_tokens // body)
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        stream.append(eos)
        if len(stream) >= n_windows * body:
            break
    n_windows = min(n_windows, len(stream) // body)
    if n_windows == 0:
        raise ValueError(f"the corpus holds fewer than {body} tokens")
    bodies = torch.tensor(stream[: n_windows * body], dtype=torch.long).view(n_windows, body)
    return torch.cat([torch.full((n_windows, 1), bos, dtype=torch.long), bodies], dim=1)


def corpus_windows(tokenizer, context_tokens: int, train_tokens: int, held_out_tokens: int,
                   extra_train_texts: Sequence[str] = (), root: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(training windows, held-out windows) from the standard library, `extra_train_texts` first in training."""
    files = list(stdlib_files(root))
    train_texts = list(extra_train_texts) + [f.text for f in files if not f.held_out]
    held_texts = [f.text for f in files if f.held_out]
    return (token_windows(train_texts, tokenizer, context_tokens, train_tokens),
            token_windows(held_texts, tokenizer, context_tokens, held_out_tokens))


def _bos_eos(tokenizer) -> tuple[int, int]:
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    if bos is None or eos is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start windows with")
    return bos, eos
