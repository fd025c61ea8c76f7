"""Consolidated inference weights: what ``moviegen.sample`` reads.

Layout of an export directory:
    config.yaml           the full job config of the run
    model.safetensors     consolidated transformer weights (no code can run on load)
    ema.safetensors       optional EMA weights, same keys
    tae/                  the TAE the latents came from (when the run used one)
    text_encoders/<slot>  built-in text encoders written with save_pretrained
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import yaml
from safetensors.torch import load_file, save_file

from moviegen.training.checkpoint import replace_dir
from moviegen.config import JobConfig, build_dataclass
from moviegen.models.transformer import MovieGenTransformer, build_model, resolve_model_args


def export_inference(directory: str, state_dict: dict, cfg: JobConfig, text_encoders,
                     ema_state_dict: dict | None = None, latent_shape=None) -> str:
    """Writes to a temporary sibling and renames, so a reader never sees half a directory.

    ``latent_shape`` [C, T, H, W] (a shape the run trained on) becomes the sampler's
    default, in ``sample.json``."""
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    cfg_dict = dataclasses.asdict(cfg)
    enc_paths = text_encoders.save_builtin(os.path.join(tmp, "text_encoders"))
    for enc in cfg_dict["text"]["encoders"]:
        if enc["name"] in enc_paths:  # point the slot at the saved copy (relative path)
            enc["path"] = os.path.join("text_encoders", enc["name"])
    tae_dir = cfg.data.tae_checkpoint
    if tae_dir and os.path.isdir(tae_dir):  # the decoder travels with the weights
        shutil.copytree(tae_dir, os.path.join(tmp, "tae"),
                        ignore=lambda d, names: [n for n in names if not n.startswith("tae")])
        cfg_dict["data"]["tae_checkpoint"] = "tae"
    with open(os.path.join(tmp, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg_dict, f, sort_keys=False)
    if latent_shape is not None:
        with open(os.path.join(tmp, "sample.json"), "w") as f:
            json.dump({"latent_shape": [int(x) for x in latent_shape]}, f)
    save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()},
              os.path.join(tmp, "model.safetensors"))
    if ema_state_dict is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in ema_state_dict.items()},
                  os.path.join(tmp, "ema.safetensors"))
    replace_dir(tmp, directory, directory + ".old")
    return directory


def load_export_config(directory: str) -> JobConfig:
    path = os.path.join(directory, "config.yaml")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory} is not an export directory: no config.yaml "
                                f"(point --checkpoint at <output_dir>/final)")
    with open(path) as f:
        tree = yaml.safe_load(f)
    cfg = build_dataclass(JobConfig, tree)
    tae = cfg.data.tae_checkpoint
    if tae and not os.path.isabs(tae) and os.path.isdir(os.path.join(directory, tae)):
        cfg.data.tae_checkpoint = os.path.join(directory, tae)
    for enc in cfg.text.encoders:  # relative encoder paths are relative to the export
        if enc.path is not None and not os.path.isabs(enc.path):
            candidate = os.path.join(directory, enc.path)
            if os.path.isdir(candidate):
                enc.path = candidate
    return cfg


def default_latent_shape(directory: str, cfg: JobConfig) -> list[int]:
    """[C, T, H, W] the run trained on (sample.json), else the synthetic-latent shape."""
    path = os.path.join(directory, "sample.json")
    if os.path.exists(path):
        with open(path) as f:
            return list(json.load(f)["latent_shape"])
    d = cfg.data
    return [cfg.model.in_channels, d.latent_frames, d.latent_height, d.latent_width]


def load_inference(directory: str, device="cpu", use_ema: bool = False):
    """(model in eval mode, config, text encoders) from an export directory."""
    from moviegen.models.text_encoders import TextEncoders

    cfg = load_export_config(directory)
    encoders = TextEncoders(cfg.text).to(device)
    args = resolve_model_args(cfg.model, encoders.out_dims)
    model: MovieGenTransformer = build_model(args, device)
    weights_file = os.path.join(directory, "ema.safetensors" if use_ema else "model.safetensors")
    if not os.path.exists(weights_file):
        raise FileNotFoundError(f"{weights_file} not found"
                                + (" (this run kept no EMA weights)" if use_ema else ""))
    state = load_file(weights_file, device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{weights_file}: missing keys {missing[:5]}, unexpected keys "
                           f"{unexpected[:5]}")
    model.eval()
    return model, cfg, encoders
