"""`data.name = "text"`: next-byte prediction over every text file under `data.root`.

The files (sorted by path, so every machine reads them in the same order) are read as bytes and
joined; binary files (a NUL byte in their first 8 KiB, git's test) are skipped. The vocabulary is
the 256 byte values. Samples are windows of the model's context: x = bytes[i*T : i*T + T] and
y = the same shifted by one. The last `data.val_fraction` of the bytes is held out for
validation, so no validation window overlaps a training one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from contracts.errors import BadInput

VOCAB = 256
#: The window length when model.factory_args has no `context` (the gpt's default).
DEFAULT_CONTEXT = 128


def context_of(cfg) -> int:
    """The window length a text run trains on: model.factory_args.context, else 128."""
    return int(cfg.model.factory_args.get("context", DEFAULT_CONTEXT))


class TokenWindows(Dataset):
    """Non-overlapping windows of `context` tokens and their next-token targets."""

    def __init__(self, tokens: torch.Tensor, context: int):
        self.tokens, self.context = tokens, context

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - 1) // self.context)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = i * self.context
        chunk = self.tokens[start:start + self.context + 1].long()
        return chunk[:-1], chunk[1:]


def is_text(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return b"\0" not in f.read(8192)
    except OSError:
        return False


def read_corpus(root: str | None, max_bytes: int | None = None) -> bytes:
    """Every text file under root, in path order, up to max_bytes (BadInput naming data.root)."""
    folder = Path(root or "")
    if not root or not folder.is_dir():
        raise BadInput(f"data.root = {root!r}: data.name = 'text' reads every text file under a directory; "
                       "no such directory")
    parts, total = [], 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if not is_text(path):
            continue
        data = path.read_bytes()
        if max_bytes is not None:
            data = data[:max_bytes - total]
        parts.append(data)
        total += len(data)
        if max_bytes is not None and total >= max_bytes:
            break
    return b"".join(parts)


def text_sets(cfg, context: int) -> tuple[TokenWindows, TokenWindows]:
    """The training windows and the held-out tail's windows."""
    corpus = read_corpus(cfg.data.root, cfg.data.max_bytes)
    tokens = torch.frombuffer(bytearray(corpus), dtype=torch.uint8) if corpus else torch.zeros(0, dtype=torch.uint8)
    n_val = int(len(tokens) * cfg.data.val_fraction)
    train, val = TokenWindows(tokens[:len(tokens) - n_val], context), TokenWindows(tokens[len(tokens) - n_val:], context)
    if len(train) == 0 or len(val) == 0:
        raise BadInput(f"data.root = {cfg.data.root!r}: {len(tokens):,} bytes of text make "
                       f"{len(train)} training and {len(val)} validation windows of {context + 1} bytes "
                       f"(data.val_fraction = {cfg.data.val_fraction}); add text or shorten model.factory_args.context")
    return train, val
