"""Frozen text encoders: UL2, ByT5 and long-prompt MetaCLIP slots (Movie Gen).

Each slot loads a `transformers` model from a local directory (weights are never
downloaded). With ``path: null`` a slot builds a small, randomly initialised, frozen T5
encoder from its config, fed by the byte-level tokenizer: the tiny demo needs no files.
Its weights come from a fixed seed and are also written next to every checkpoint
(``save_builtin``), so sampling uses exactly the encoder training used.

The trainable per-slot Linear + LayerNorm lives in the transformer (``text_proj``).
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn as nn

from moviegen.models.tokenizer import ByteTokenizer

BUILTIN_SEED = 1234
LOOKBACK_BIAS = 12.0


def _builtin_t5(enc_cfg):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=ByteTokenizer.vocab_size, d_model=enc_cfg.d_model,
                      d_kv=enc_cfg.d_model // enc_cfg.num_heads, d_ff=enc_cfg.d_ff,
                      num_layers=enc_cfg.num_layers, num_heads=enc_cfg.num_heads,
                      feed_forward_proj="gated-gelu", dropout_rate=0.0,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BUILTIN_SEED)
        model = T5EncoderModel(config)
        # At T5's default init the random attention is nearly uniform, so every token's
        # output is its own byte plus the mean of all bytes: "from left to right" and
        # "from right to left" come out almost identical. We give head h of every layer
        # a fixed look-back of h + 1 bytes instead (a spike in T5's relative-position
        # bias), so each output hashes the preceding byte n-gram and word order survives.
        with torch.no_grad():
            for block in model.encoder.block:
                attn = block.layer[0].SelfAttention
                if attn.has_relative_attention_bias:
                    bias = attn.relative_attention_bias.weight  # [buckets, heads]
                    bias.zero_()
                    for h in range(bias.shape[1]):
                        bias[h + 1, h] = LOOKBACK_BIAS  # bucket k <=> key k tokens back
    return model


def _load_tokenizer(name: str, path: str, max_length: int):
    has_tok_files = any(os.path.exists(os.path.join(path, f)) for f in
                        ("tokenizer_config.json", "tokenizer.json", "spiece.model", "vocab.json"))
    if not has_tok_files:
        if name == "byt5":
            return ByteTokenizer(max_length)
        raise FileNotFoundError(f"text encoder '{name}': no tokenizer files in {path} "
                                f"(save the tokenizer there with save_pretrained)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


@contextlib.contextmanager
def _no_hf_bars():
    """transformers' own loading/saving bars off: a second of work, and carriage-return
    noise in a log file."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _load_model(name: str, path: str):
    with _no_hf_bars():
        return _load_model_quietly(name, path)


def _load_model_quietly(name: str, path: str):
    from transformers import AutoConfig, CLIPTextModel, T5EncoderModel

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if name == "metaclip" or config.model_type in ("clip", "clip_text_model"):
        return CLIPTextModel.from_pretrained(path, local_files_only=True)
    if config.model_type in ("t5", "umt5", "mt5"):
        return T5EncoderModel.from_pretrained(path, local_files_only=True)
    raise ValueError(f"text encoder '{name}' at {path}: unsupported model_type "
                     f"'{config.model_type}' (expected t5/mt5/umt5 or clip)")


class FrozenTextEncoder(nn.Module):
    """One slot: tokenizer + frozen encoder -> (embeddings [B, L, K], mask [B, L])."""

    def __init__(self, enc_cfg):
        super().__init__()
        self.name = enc_cfg.name
        self.max_length = enc_cfg.max_length
        self.builtin = enc_cfg.path is None
        if self.builtin:
            self.tokenizer = ByteTokenizer(enc_cfg.max_length)
            self.model = _builtin_t5(enc_cfg)
        else:
            self.tokenizer = _load_tokenizer(enc_cfg.name, enc_cfg.path, enc_cfg.max_length)
            self.model = _load_model(enc_cfg.name, enc_cfg.path)
        self.model.eval().requires_grad_(False)

    @property
    def out_dim(self) -> int:
        return self.model.config.hidden_size if hasattr(self.model.config, "hidden_size") \
            else self.model.config.d_model

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.tokenizer, ByteTokenizer):
            return self.tokenizer(captions)
        out = self.tokenizer(captions, padding="max_length", truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return out["input_ids"], out["attention_mask"].bool()

    @torch.no_grad()
    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor):
        device = next(self.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        out = self.model(input_ids=ids, attention_mask=mask.long())
        return out.last_hidden_state, mask

    def forward(self, captions: list[str]):
        return self.encode_ids(*self.tokenize(captions))


class TextEncoders(nn.Module):
    """All slots of ``cfg.text``; ``encode`` returns dicts keyed by slot name."""

    def __init__(self, text_cfg):
        super().__init__()
        self.encoders = nn.ModuleDict({e.name: FrozenTextEncoder(e) for e in text_cfg.encoders})

    @property
    def out_dims(self) -> dict[str, int]:
        return {name: enc.out_dim for name, enc in self.encoders.items()}

    def encode(self, captions: list[str]) -> tuple[dict, dict]:
        embeds, masks = {}, {}
        for name, enc in self.encoders.items():
            embeds[name], masks[name] = enc(captions)
        return embeds, masks

    def save_builtin(self, directory: str) -> dict[str, str]:
        """Writes built-in encoders with save_pretrained; returns slot -> path."""
        paths = {}
        with _no_hf_bars():
            for name, enc in self.encoders.items():
                if enc.builtin:
                    path = os.path.join(directory, name)
                    enc.model.save_pretrained(path)
                    paths[name] = path
        return paths


def drop_captions(masks: dict, keep_B: torch.Tensor) -> dict:
    """Caption dropout for classifier-free guidance training: sample b keeps its text where
    ``keep_B[b]`` (bool [B]) is True, and no text token in any slot otherwise. The draws
    come with each sample's t and noise (``moviegen.flow.per_sample_draws``)."""
    keep = keep_B.to(next(iter(masks.values())).device)
    return {k: m & keep[:, None] for k, m in masks.items()}


def null_text(masks: dict) -> dict:
    """All-masked text: the unconditional branch of classifier-free guidance."""
    return {k: torch.zeros_like(m, dtype=torch.bool) for k, m in masks.items()}
