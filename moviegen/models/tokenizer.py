"""Byte-level tokenizer in the ByT5 convention: no vocabulary file is needed.

ids: 0 = pad, 1 = end of sequence, 2 = unknown, byte b -> b + 3 (vocab 259).
Used by the embedded default's text encoder and by the data loader, which tokenises
captions in its workers.
"""
from __future__ import annotations

import torch

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
BYTE_OFFSET = 3
VOCAB_SIZE = 256 + BYTE_OFFSET


def fps_prefix(caption: str, fps: float | int | None) -> str:
    """Movie Gen conditions on frame rate through the text: "FPS-16 a red circle ..."."""
    if fps is None:
        return caption
    return f"FPS-{int(round(float(fps)))} {caption}"


class ByteTokenizer:
    """Encodes captions as UTF-8 bytes; truncates to ``max_length`` (EOS kept last)."""

    vocab_size = VOCAB_SIZE
    pad_token_id = PAD_ID
    eos_token_id = EOS_ID

    def __init__(self, max_length: int = 128):
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.max_length = max_length

    def encode(self, text: str) -> list[int]:
        ids = [b + BYTE_OFFSET for b in text.encode("utf-8")][: self.max_length - 1]
        return ids + [EOS_ID]

    def decode(self, ids) -> str:
        data = bytes(i - BYTE_OFFSET for i in ids if int(i) >= BYTE_OFFSET)
        return data.decode("utf-8", errors="replace")

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (ids [B, max_length] int64, mask [B, max_length] bool; True = real token)."""
        ids = torch.full((len(texts), self.max_length), PAD_ID, dtype=torch.long)
        for i, text in enumerate(texts):
            row = self.encode(text)
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return ids, ids != PAD_ID
