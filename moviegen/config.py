"""Job configuration: nested dataclasses, defaults < YAML < dotted CLI overrides.

    cfg = load_config("launch/configs/tiny.yaml", ["--train.steps=60", "--parallel.tp=2"])

Every field carries a docstring (the string literal under it); ``python -m moviegen.train
--help`` prints them. Unknown keys, wrong types and impossible values raise
``ConfigError`` naming the dotted key, before any process group or model exists.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import sys
import textwrap
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from moviegen.data.config import VideoDataConfig


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or impossible."""


# --------------------------------------------------------------------------- sections
@dataclass
class ModelConfig:
    name: str = "tiny"
    """Registered size: one of moviegen.model.MODEL_REGISTRY (30b, 7b, 5b, 1b, tiny)."""
    in_channels: int = 16
    """Latent channels coming from the TAE (16 in Movie Gen)."""
    patch_size: list[int] = field(default_factory=lambda: [1, 2, 2])
    """Conv3d patchify kernel = stride over (T', H', W') latents."""
    max_latent_frames: int = 8
    """Rows of the temporal position table, in patches (Movie Gen 256px stage: 32)."""
    max_latent_height: int = 16
    """Rows of the height position table, in patches."""
    max_latent_width: int = 16
    """Rows of the width position table, in patches."""
    norm_eps: float = 1e-6
    """RMSNorm epsilon."""
    kernels: str = "auto"
    """Fused kernels: auto (Triton on CUDA, torch elsewhere), triton, or torch."""
    dim: Optional[int] = None
    """Override the registered width (ablations); None keeps the registry's."""
    n_layers: Optional[int] = None
    """Override the registered depth; None keeps the registry's."""
    n_heads: Optional[int] = None
    """Override the registered head count; None keeps the registry's."""
    ffn_dim: Optional[int] = None
    """Override the registered SwiGLU hidden width; None keeps the registry's."""


@dataclass
class TextEncoderConfig:
    name: str = "byt5"
    """Slot name: ul2, byt5 or metaclip (each gets its own Linear + LayerNorm)."""
    path: Optional[str] = None
    """Local directory with a `transformers` model (save_pretrained layout). None builds a
    small randomly initialised frozen T5 encoder from the fields below (the tiny demo)."""
    max_length: int = 64
    """Tokens kept per caption (Movie Gen's long-prompt MetaCLIP: 256)."""
    d_model: int = 64
    """Width of the built-in encoder (used only when path is None)."""
    num_layers: int = 2
    """Depth of the built-in encoder (used only when path is None)."""
    num_heads: int = 4
    """Heads of the built-in encoder (used only when path is None)."""
    d_ff: int = 128
    """FFN width of the built-in encoder (used only when path is None)."""


@dataclass
class TextConfig:
    encoders: list[TextEncoderConfig] = field(default_factory=lambda: [TextEncoderConfig()])
    """Frozen text encoders; outputs are projected and concatenated along the sequence."""
    caption_dropout: float = 0.1
    """Probability of dropping the caption (all text masked) for classifier-free guidance."""


@dataclass
class DataConfig:
    kind: str = "synthetic_latents"
    """synthetic_latents (generated caption-dependent latents, no files), video (files
    encoded on the fly) or precomputed (TAE latents from python -m moviegen.precompute)."""
    batch_size: int = 8
    """Samples per data-parallel rank per step."""
    num_train: int = 512
    """Samples in the generated training set (synthetic_latents)."""
    num_val: int = 32
    """Held-out samples for validation loss."""
    latent_frames: int = 4
    """T' of the generated latents."""
    latent_height: int = 8
    """H' of the generated latents."""
    latent_width: int = 12
    """W' of the generated latents (not square on purpose)."""
    fps: int = 16
    """Frame rate written into captions as the "FPS-n " prefix (synthetic_latents)."""
    video: VideoDataConfig = field(default_factory=VideoDataConfig)
    """Video/image files (data.kind=video): manifest, buckets, decode backend."""
    encoder: str = "random_patch"
    """data.kind=video: pixels -> latents by `tae` (data.tae_checkpoint) or `random_patch`
    (a fixed random Conv3d at the video config's compression, for runs without a TAE)."""
    tae_checkpoint: Optional[str] = None
    """Directory of a trained TAE (python -m moviegen.train_tae) for encoder=tae."""
    precomputed_dir: Optional[str] = None
    """data.kind=precomputed: output directory of python -m moviegen.precompute."""


@dataclass
class FlowConfig:
    sigma_min: float = 1e-5
    """Path X_t = t X1 + (1 - (1 - sigma_min) t) X0."""
    sample_steps: int = 50
    """Euler steps at sampling time (linear-quadratic schedule)."""
    linear_steps_as_if: int = 1000
    """The linear half of the schedule steps as if the solve had this many steps."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale at sampling time."""


@dataclass
class TrainConfig:
    steps: int = 300
    """Optimizer steps to run (a resumed run stops here too)."""
    lr: float = 1e-3
    """Peak AdamW learning rate (Movie Gen: ~6e-5 at 30B)."""
    min_lr_ratio: float = 0.1
    """Cosine schedule floor as a fraction of lr."""
    warmup_steps: int = 20
    """Linear warmup steps."""
    lr_schedule: str = "cosine"
    """constant or cosine (after warmup)."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    seed: int = 0
    """Seed for init, data order, t and noise sampling."""
    mixed_precision: str = "auto"
    """auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or fp32."""
    log_every: int = 10
    """Write a metrics.jsonl row every this many steps."""
    val_every: int = 100
    """Validation loss every this many steps (and at step 0 and at the end)."""
    progress_bar: bool = True
    """Show a console progress bar on rank 0."""
    device: str = "auto"
    """auto (cuda when available), cuda or cpu."""
    init_from: Optional[str] = None
    """Export directory of an earlier stage to start from; position tables are resized
    to this stage's model.max_latent_* (see position_resize)."""
    position_resize: str = "interpolate"
    """How init_from's position tables reach this stage's sizes: interpolate or extend."""


@dataclass
class ParallelConfig:
    dp_replicate: int = 1
    """HSDP replicate degree (copies of the sharded model)."""
    dp_shard: int = -1
    """FSDP shard degree; -1 takes what is left of the world size."""
    cp: int = 1
    """Context parallel degree: the token sequence is split across these ranks."""
    tp: int = 1
    """Tensor parallel degree (with sequence parallel for the replicated parts)."""
    reshard_after_forward: bool = True
    """FSDP: free each block's gathered parameters after its forward (all-gather again in
    backward; less memory, more communication)."""
    ac: str = "none"
    """Activation checkpointing per block: none, full, or selective (save matmul and
    attention outputs, recompute norms/elementwise/all-gathers)."""
    compile: bool = False
    """torch.compile each transformer block."""
    param_dtype: str = "auto"
    """FSDP compute dtype of gathered parameters: auto (bf16 on CUDA, fp32 on CPU), bf16,
    fp32."""
    reduce_dtype: str = "fp32"
    """FSDP gradient reduction dtype: fp32 or bf16."""

    def __post_init__(self):
        if self.ac not in ("none", "full", "selective"):
            raise ConfigError(f"parallel.ac: '{self.ac}' is not one of none, full, selective")
        if self.param_dtype not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"parallel.param_dtype: '{self.param_dtype}' is not one of "
                              f"auto, bf16, fp32")
        if self.reduce_dtype not in ("fp32", "bf16"):
            raise ConfigError(f"parallel.reduce_dtype: '{self.reduce_dtype}' is not one of "
                              f"fp32, bf16")


@dataclass
class CheckpointConfig:
    every_steps: int = 0
    """Save every this many steps (0: only at the end, on preemption and at train.steps)."""
    keep_last: int = 3
    """Committed checkpoints kept under <output_dir>/checkpoints (0 keeps all)."""
    async_save: bool = False
    """Write checkpoints in a background thread (dcp.async_save) after staging to CPU."""
    resume: bool = True
    """Resume from <output_dir>/checkpoints/latest when it exists."""
    resume_from: Optional[str] = None
    """Load this checkpoint directory instead of latest (e.g. an older step_N after a
    corrupt one); the run then continues from its step."""
    ema_decay: float = 0.0
    """EMA of the weights, saved with checkpoints and exported as ema.safetensors (0: off;
    e.g. 0.9999)."""
    max_consecutive_nonfinite: int = 5
    """Stop after this many consecutive steps with a non-finite loss or gradient norm
    (each one skips its update); 0 never stops."""


@dataclass
class MetricsConfig:
    tensorboard: bool = True
    """Write TensorBoard scalars to <output_dir>/tensorboard (rank 0)."""
    wandb: bool = False
    """Also log to Weights & Biases when the wandb package is installed."""
    wandb_project: str = "moviegen"
    """wandb project name."""
    profile_steps: list[int] = field(default_factory=list)
    """Steps to trace with torch.profiler (chrome traces in <output_dir>/profile)."""


@dataclass
class JobConfig:
    output_dir: str = "runs/tiny"
    """Metrics, checkpoints and samples of one run; reusing it resumes the run."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Transformer shape."""
    text: TextConfig = field(default_factory=TextConfig)
    """Text encoders and caption dropout."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training and validation data."""
    flow: FlowConfig = field(default_factory=FlowConfig)
    """Flow matching path and sampler."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Device-mesh layout."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpointing."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """TensorBoard, wandb and profiler traces (metrics.jsonl is always written)."""


# --------------------------------------------------------------------------- building
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against the annotation ``tp`` and builds nested dataclasses."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got "
                              f"{type(value).__name__} {value!r}")
        return build_dataclass(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        (elem_tp,) = typing.get_args(tp)[:1] or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, elem_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-2" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {type(value).__name__} {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected int, got bool {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} "
                          f"{value!r}")
    return value


def build_dataclass(cls: type, values: dict, prefix: str = "") -> Any:
    """``cls(**values)`` with unknown keys and wrong types rejected by dotted name."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise ConfigError(f"unknown key '{prefix}{unknown[0]}' (valid keys in "
                          f"'{prefix.rstrip('.') or 'top level'}': {', '.join(names)})")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in values.items()}
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--{dotted}: '{p}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(args: list[str]) -> dict:
    """``["--train.steps=60", "--model.name", "1b"]`` -> nested dict (values parsed as YAML)."""
    tree: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --section.key=value")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"{arg}: missing value")
            key, raw = arg[2:], args[i + 1]
            i += 1
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key, value)
        i += 1
    return tree


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(path: str | None, overrides: list[str] | None = None,
                cls: type = JobConfig, validate: bool = True) -> Any:
    """Defaults < YAML file < CLI overrides, then ``validate_config``."""
    tree: dict = {}
    if path is not None:
        if not os.path.exists(path):
            raise ConfigError(f"config file not found: {path}")
        with open(path) as f:
            try:
                loaded = yaml.safe_load(f)
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        tree = loaded or {}
    tree = _deep_merge(tree, parse_overrides(overrides or []))
    try:
        cfg = build_dataclass(cls, tree)
        if validate and cls is JobConfig:
            validate_config(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path or '<defaults>'}: {e}") from None
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


# --------------------------------------------------------------------------- validation
_VALIDATORS: list = []


def register_validator(fn):
    """Sections defined elsewhere (data, parallel, ...) add checks with this decorator."""
    _VALIDATORS.append(fn)
    return fn


def _check(cond: bool, key: str, why: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {why}")


def validate_config(cfg: JobConfig) -> None:
    """Rejects impossible values with the key and the reason (no process group needed)."""
    from moviegen.model import MODEL_REGISTRY, resolve_model_args  # local: avoid a cycle

    m = cfg.model
    _check(m.name in MODEL_REGISTRY, "model.name",
           f"'{m.name}' is not a registered size (choose from {', '.join(MODEL_REGISTRY)})")
    args = resolve_model_args(m)
    _check(args.dim > 0 and args.n_heads > 0 and args.n_layers > 0 and args.ffn_dim > 0,
           "model", "dim, n_heads, n_layers and ffn_dim must be positive")
    _check(args.dim % args.n_heads == 0, "model.n_heads",
           f"{args.n_heads} heads do not divide dim {args.dim}")
    _check(len(m.patch_size) == 3 and all(p >= 1 for p in m.patch_size), "model.patch_size",
           f"expected three positive ints, got {m.patch_size}")
    _check(m.kernels in ("auto", "triton", "torch"), "model.kernels",
           f"'{m.kernels}' is not one of auto, triton, torch")
    for k in ("max_latent_frames", "max_latent_height", "max_latent_width", "in_channels"):
        _check(getattr(m, k) >= 1, f"model.{k}", "must be >= 1")

    _check(len(cfg.text.encoders) >= 1, "text.encoders", "at least one encoder is needed")
    seen = set()
    for i, enc in enumerate(cfg.text.encoders):
        key = f"text.encoders[{i}]"
        _check(enc.name in ("ul2", "byt5", "metaclip"), f"{key}.name",
               f"'{enc.name}' is not one of ul2, byt5, metaclip")
        _check(enc.name not in seen, f"{key}.name", f"slot '{enc.name}' appears twice")
        seen.add(enc.name)
        _check(enc.max_length >= 2, f"{key}.max_length", "must be >= 2")
        if enc.path is not None:
            _check(os.path.isdir(enc.path), f"{key}.path",
                   f"directory '{enc.path}' does not exist (save a model there with "
                   f"save_pretrained, or set path: null for the built-in tiny encoder)")
        else:
            _check(enc.d_model % enc.num_heads == 0, f"{key}.num_heads",
                   f"{enc.num_heads} heads do not divide d_model {enc.d_model}")
    _check(0.0 <= cfg.text.caption_dropout < 1.0, "text.caption_dropout", "must be in [0, 1)")

    d = cfg.data
    _check(d.batch_size >= 1, "data.batch_size", "must be >= 1")
    if d.kind == "synthetic_latents":
        pt, ph, pw = m.patch_size
        _check(d.latent_height % ph == 0, "data.latent_height",
               f"{d.latent_height} is not divisible by the patch height {ph}")
        _check(d.latent_width % pw == 0, "data.latent_width",
               f"{d.latent_width} is not divisible by the patch width {pw}")
        _check(d.latent_frames // pt <= m.max_latent_frames, "data.latent_frames",
               f"{d.latent_frames} frames exceed model.max_latent_frames={m.max_latent_frames}")
        _check(d.latent_height // ph <= m.max_latent_height, "data.latent_height",
               f"{d.latent_height // ph} patches exceed model.max_latent_height="
               f"{m.max_latent_height}")
        _check(d.latent_width // pw <= m.max_latent_width, "data.latent_width",
               f"{d.latent_width // pw} patches exceed model.max_latent_width="
               f"{m.max_latent_width}")
        _check(d.num_train >= d.batch_size, "data.num_train", "must be >= data.batch_size")
        _check(d.num_val >= 1, "data.num_val", "must be >= 1")
    elif d.kind == "video":
        try:
            d.video.validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        _check(d.video.manifest != "", "data.video.manifest",
               "a manifest is needed (python -m moviegen.data.prepare writes one)")
        _check(os.path.exists(d.video.manifest), "data.video.manifest",
               f"file '{d.video.manifest}' does not exist")
        _check(d.encoder in ("random_patch", "tae"), "data.encoder",
               f"'{d.encoder}' is not one of random_patch, tae")
        if d.encoder == "tae":
            _check(d.tae_checkpoint is not None and os.path.isdir(d.tae_checkpoint),
                   "data.tae_checkpoint", f"'{d.tae_checkpoint}' is not a TAE directory "
                   f"(python -m moviegen.train_tae writes one)")
    elif d.kind == "precomputed":
        _check(d.precomputed_dir is not None and
               os.path.exists(os.path.join(d.precomputed_dir, "index.json")),
               "data.precomputed_dir", f"no index.json in '{d.precomputed_dir}' "
               f"(python -m moviegen.precompute writes it)")
    else:
        _check(False, "data.kind",
               f"'{d.kind}' is not one of synthetic_latents, video, precomputed")
    if d.kind == "video":
        from moviegen.data_sources import latent_grids

        pt, ph, pw = m.patch_size
        for name, T, H, W in latent_grids(cfg):
            _check(T // pt <= m.max_latent_frames and H // ph <= m.max_latent_height
                   and W // pw <= m.max_latent_width, "model.max_latent_*",
                   f"data bucket '{name}' gives a patch grid ({T // pt}, {H // ph}, {W // pw}) "
                   f"larger than the position tables ({m.max_latent_frames}, "
                   f"{m.max_latent_height}, {m.max_latent_width})")

    t = cfg.train
    _check(t.steps >= 0, "train.steps", "must be >= 0")
    _check(t.lr > 0, "train.lr", "must be > 0")
    _check(t.lr_schedule in ("constant", "cosine"), "train.lr_schedule",
           f"'{t.lr_schedule}' is not one of constant, cosine")
    _check(t.mixed_precision in ("auto", "bf16", "fp32"), "train.mixed_precision",
           f"'{t.mixed_precision}' is not one of auto, bf16, fp32")
    _check(t.device in ("auto", "cuda", "cpu"), "train.device",
           f"'{t.device}' is not one of auto, cuda, cpu")
    _check(t.log_every >= 1, "train.log_every", "must be >= 1")
    _check(t.val_every >= 1, "train.val_every", "must be >= 1")
    _check(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
    _check(t.position_resize in ("interpolate", "extend"), "train.position_resize",
           f"'{t.position_resize}' is not one of interpolate, extend")
    if t.init_from is not None:
        _check(os.path.exists(os.path.join(t.init_from, "model.safetensors")), "train.init_from",
               f"no model.safetensors in '{t.init_from}' (give an export directory, "
               f"e.g. <output_dir>/final of the previous stage)")
    _check(cfg.flow.sample_steps >= 2, "flow.sample_steps", "must be >= 2")
    _check(0 < cfg.flow.sigma_min < 1, "flow.sigma_min", "must be in (0, 1)")

    p = cfg.parallel
    for k in ("dp_replicate", "cp", "tp"):
        _check(getattr(p, k) >= 1, f"parallel.{k}", "must be >= 1")
    _check(p.dp_shard == -1 or p.dp_shard >= 1, "parallel.dp_shard", "must be >= 1 or -1")
    _check(args.n_heads % p.tp == 0, "parallel.tp",
           f"tp={p.tp} does not divide model heads {args.n_heads}")
    _check(args.ffn_dim % p.tp == 0, "parallel.tp",
           f"tp={p.tp} does not divide the FFN width {args.ffn_dim}")
    c = cfg.checkpoint
    _check(c.every_steps >= 0, "checkpoint.every_steps", "must be >= 0")
    _check(c.keep_last >= 0, "checkpoint.keep_last", "must be >= 0")
    _check(c.ema_decay == 0.0 or 0.0 < c.ema_decay < 1.0, "checkpoint.ema_decay",
           "must be 0 (off) or in (0, 1)")
    _check(c.max_consecutive_nonfinite >= 0, "checkpoint.max_consecutive_nonfinite",
           "must be >= 0")
    if c.resume_from is not None:
        _check(os.path.isfile(os.path.join(c.resume_from, ".metadata")),
               "checkpoint.resume_from",
               f"'{c.resume_from}' is not a checkpoint directory (no .metadata; give "
               f"<output_dir>/checkpoints/step_N)")
    _check(all(s >= 1 for s in cfg.metrics.profile_steps), "metrics.profile_steps",
           "steps are 1-based")
    for fn in _VALIDATORS:
        fn(cfg)


# --------------------------------------------------------------------------- help text
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass, read from its source."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(src).body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cls: type = JobConfig, prefix: str = "") -> list[str]:
    """One line per field: --dotted.key (default): docstring."""
    lines = []
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append(f"[{prefix}{f.name}] {docs.get(f.name, '')}")
            lines.extend(describe(tp, prefix + f.name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default) or (isinstance(default, list) and default
                                                 and dataclasses.is_dataclass(default[0])):
            default = "[...]"
        lines.append(f"  --{prefix}{f.name} ({default!r}): {docs.get(f.name, '')}")
    return lines


def parse_cli(argv: list[str] | None = None, description: str = "") -> tuple[str | None, list[str]]:
    """Splits ``--config PATH`` from the overrides; prints field help for -h/--help."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(description.strip() + "\n\nOverrides (any field, dotted):")
        print("\n".join(describe()))
        raise SystemExit(0)
    path = None
    rest = []
    i = 0
    while i < len(argv):
        if argv[i] == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a path")
            path = argv[i + 1]
            i += 2
            continue
        if argv[i].startswith("--config="):
            path = argv[i].split("=", 1)[1]
            i += 1
            continue
        rest.append(argv[i])
        i += 1
    return path, rest
