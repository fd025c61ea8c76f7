"""The training job's configuration: one dataclass per section, each checking itself.

    cfg = load_config("launch/configs/tiny.yaml", ["--train.steps=60", "--parallel.tp=2"])

Every field carries a docstring (the string literal under it); ``python -m moviegen.train
--help`` prints them. A section's ``validate`` checks its own fields; ``JobConfig.validate``
checks the rules between sections (data shapes against the model's position tables).
The layout rules (world size, heads and tokens against tp and cp) live in
``parallel.parallel_dims`` and are checked by the trainer before the process group starts.
The rules that need the data or model code (every data shape against the position tables
and windows, train.tasks against those shapes, train.trainable against the parameter
names) are ``moviegen.training.diffusion.check_job``, which ``python -m moviegen.train``
runs while parsing: this package reads only the model sizes (moviegen.models.sizes) and
the layout names (moviegen.parallel.parallel_dims), never torch.
The TAE's sections (``TAEJobConfig``) reuse train/checkpoint/metrics/parallel from here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from moviegen.config.core import ConfigError, check, check_choice, check_output_dir
from moviegen.config.video import VideoDataConfig
from moviegen.models.sizes import MODEL_REGISTRY, TAE_PRESETS, effective_window, resolve_model_args
from moviegen.parallel.parallel_dims import AC_MODES


# --------------------------------------------------------------------------- sections
@dataclass
class ModelConfig:
    name: str = "tiny"
    """Registered size: one of moviegen.models.sizes.MODEL_REGISTRY (30b, 7b, 5b, 1b, tiny)."""
    in_channels: int = 16
    """Latent channels coming from the TAE (16 in Movie Gen)."""
    cond_channels: int = 0
    """Conditioning input channels: 0 (text-to-video only) or in_channels + 1 (a
    conditioning latent and a binary mask of the given latent frames, concatenated with
    the noisy latent before patchify, Emu Video's form; zero-initialised, so a
    text-to-video export loads through train.init_from unchanged). Needed by train.tasks
    other than t2v and by the upsampler."""
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
    attention_pattern: str = "full"
    """Self-attention: full, or window (W.A.L.T, Gupta et al. 2023: even blocks attend
    within spatial windows, odd blocks within spatiotemporal windows)."""
    spatial_window: list[int] = field(default_factory=lambda: [16, 16])
    """[h, w] in patches of the spatial windows (attention_pattern=window). A side at
    least as large as the grid covers it; a smaller one must divide the grid."""
    spatiotemporal_window: list[int] = field(default_factory=lambda: [8, 8, 8])
    """[t, h, w] in patches of the spatiotemporal windows (attention_pattern=window);
    one-frame images attend within their frame."""

    def validate(self) -> None:
        check(self.name in MODEL_REGISTRY, "model.name", f"'{self.name}' is not a registered "
              f"size (choose from {', '.join(MODEL_REGISTRY)})")
        args = resolve_model_args(self)
        check(args.dim > 0 and args.n_heads > 0 and args.n_layers > 0 and args.ffn_dim > 0,
              "model", "dim, n_heads, n_layers and ffn_dim must be positive")
        check(args.dim % args.n_heads == 0, "model.n_heads",
              f"{args.n_heads} heads do not divide dim {args.dim}")
        check(len(self.patch_size) == 3 and all(p >= 1 for p in self.patch_size),
              "model.patch_size", f"expected three positive ints, got {self.patch_size}")
        check_choice(self.kernels, "model.kernels", ("auto", "triton", "torch"))
        for k in ("max_latent_frames", "max_latent_height", "max_latent_width", "in_channels"):
            check(getattr(self, k) >= 1, f"model.{k}", "must be >= 1")
        check(self.cond_channels in (0, self.in_channels + 1), "model.cond_channels",
              f"{self.cond_channels}, but it must be 0 (text-to-video only) or "
              f"model.in_channels + 1 = {self.in_channels + 1} (the conditioning latent and "
              f"one mask channel)")
        check_choice(self.attention_pattern, "model.attention_pattern", ("full", "window"))
        for key, n in (("spatial_window", 2), ("spatiotemporal_window", 3)):
            win = getattr(self, key)
            check(len(win) == n and all(w >= 1 for w in win), f"model.{key}",
                  f"expected {n} positive ints (patches), got {win}")

    def patch_grid_fits(self, name: str, T: int, H: int, W: int) -> None:
        """Latents [T, H, W] of data source ``name`` fit the position tables."""
        pt, ph, pw = self.patch_size
        check(T % pt == 0 and H % ph == 0 and W % pw == 0, "model.patch_size",
              f"data '{name}' gives latents (T'={T}, H'={H}, W'={W}) that the patch size "
              f"{tuple(self.patch_size)} does not divide")
        check(T // pt <= self.max_latent_frames and H // ph <= self.max_latent_height
              and W // pw <= self.max_latent_width, "model.max_latent_*",
              f"data '{name}' gives a patch grid ({T // pt}, {H // ph}, {W // pw}) that "
              f"exceeds model.max_latent_frames/height/width = ({self.max_latent_frames}, "
              f"{self.max_latent_height}, {self.max_latent_width})")
        if self.attention_pattern == "window":
            grid = (T // pt, H // ph, W // pw)
            for key, win in (("spatial_window", [1, *self.spatial_window]),
                             ("spatiotemporal_window", self.spatiotemporal_window)):
                try:
                    effective_window(win, grid)
                except ValueError:
                    check(False, f"model.{key}",
                          f"{list(getattr(self, key))} does not tile the patch grid {grid} of "
                          f"data '{name}': each side must divide the grid's or be at least "
                          f"as large (grid sides t, h, w)")


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

    def validate(self, key: str = "text.encoders[]") -> None:
        check_choice(self.name, f"{key}.name", ("ul2", "byt5", "metaclip"))
        check(self.max_length >= 2, f"{key}.max_length", "must be >= 2")
        if self.path is not None:
            check(os.path.isdir(self.path), f"{key}.path",
                  f"directory '{self.path}' does not exist (save a model there with "
                  f"save_pretrained, or set path: null for the built-in tiny encoder)")
        else:
            check(self.d_model % self.num_heads == 0, f"{key}.num_heads",
                  f"{self.num_heads} heads do not divide d_model {self.d_model}")


@dataclass
class TextConfig:
    encoders: list[TextEncoderConfig] = field(default_factory=lambda: [TextEncoderConfig()])
    """Frozen text encoders; outputs are projected and concatenated along the sequence."""
    caption_dropout: float = 0.1
    """Probability of dropping the caption (all text masked) for classifier-free guidance."""

    def validate(self) -> None:
        check(len(self.encoders) >= 1, "text.encoders", "at least one encoder is needed")
        names = [e.name for e in self.encoders]
        for i, enc in enumerate(self.encoders):
            enc.validate(f"text.encoders[{i}]")
        for i, name in enumerate(names):
            check(name not in names[:i], f"text.encoders[{i}].name",
                  f"slot '{name}' appears twice")
        check(0.0 <= self.caption_dropout < 1.0, "text.caption_dropout", "must be in [0, 1)")


@dataclass
class DataConfig:
    kind: str = "synthetic_latents"
    """synthetic_latents (generated caption-dependent latents, no files), video (files
    encoded on the fly) or precomputed (TAE latents from python -m moviegen.precompute)."""
    batch_size: int = 8
    """Samples per data-parallel rank per step (used when global_batch_size is not set)."""
    global_batch_size: Optional[int] = None
    """Samples per optimizer step, whatever the layout: each data-parallel rank takes
    global_batch_size / (dp_replicate x dp_shard) of them (synthetic_latents, precomputed;
    video batches are sized by data.video.tokens_per_batch)."""
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

    def validate(self) -> None:
        check(self.batch_size >= 1, "data.batch_size", "must be >= 1")
        check(self.global_batch_size is None or self.global_batch_size >= 1,
              "data.global_batch_size", "must be >= 1 (or unset: data.batch_size per rank)")
        check_choice(self.kind, "data.kind", ("synthetic_latents", "video", "precomputed"))
        check(self.global_batch_size is None or self.kind != "video", "data.global_batch_size",
              "does not apply to data.kind=video, whose bucket batches are sized by "
              "data.video.tokens_per_batch; unset it")
        if self.kind == "synthetic_latents":
            check(self.num_train >= (self.global_batch_size or self.batch_size),
                  "data.num_train", "must be >= the batch size")
            check(self.num_val >= 1, "data.num_val", "must be >= 1")
        elif self.kind == "video":
            try:
                self.video.validate()
            except ValueError as e:
                raise ConfigError(str(e), key=str(e).split(":")[0]) from None
            check(self.video.manifest != "", "data.video.manifest",
                  "a manifest is needed (python -m moviegen.data.prepare writes one)")
            check(os.path.exists(self.video.manifest), "data.video.manifest",
                  f"file '{self.video.manifest}' does not exist")
            check_choice(self.encoder, "data.encoder", ("random_patch", "tae"))
            if self.encoder == "tae":
                check(self.tae_checkpoint is not None, "data.tae_checkpoint",
                      "required with data.encoder=tae: the output_dir of python -m "
                      "moviegen.train_tae (tae.safetensors + tae_config.json)")
                check(os.path.isdir(self.tae_checkpoint),
                      "data.tae_checkpoint", f"'{self.tae_checkpoint}' is not a TAE directory "
                      f"(python -m moviegen.train_tae writes one)")
        else:
            check(self.precomputed_dir is not None, "data.precomputed_dir",
                  "required with data.kind=precomputed: the output directory of python -m "
                  "moviegen.precompute (this config with --data.video.manifest=M "
                  "--data.tae_checkpoint=T --data.precomputed_dir=D writes it)")
            check(os.path.exists(os.path.join(self.precomputed_dir, "index.json")),
                  "data.precomputed_dir", f"no index.json in '{self.precomputed_dir}' "
                  f"(python -m moviegen.precompute writes it)")


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

    def validate(self) -> None:
        check(self.sample_steps >= 2, "flow.sample_steps", "must be >= 2")
        check(0 < self.sigma_min < 1, "flow.sigma_min", "must be in (0, 1)")


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
    """Show a console progress bar on rank 0 when stderr is a terminal (redirected to a
    file, the console gets one line per logged step and no bar)."""
    device: str = "auto"
    """auto (cuda when available), cuda or cpu."""
    init_from: Optional[str] = None
    """Export directory of an earlier stage to start from; position tables are resized
    to this stage's model.max_latent_* (see position_resize)."""
    position_resize: str = "interpolate"
    """How init_from's position tables reach this stage's sizes: interpolate or extend."""
    sample_every: int = 0
    """Generate train.sample_prompts every this many steps (0: never; the transformer
    only): videos decoded with data.tae_checkpoint (else latents .pt) under
    <output_dir>/samples/step_N/ and in TensorBoard; EMA weights when EMA is on."""
    sample_prompts: list[str] = field(default_factory=list)
    """Captions to sample during training (with train.sample_every)."""
    tasks: dict[str, float] = field(default_factory=dict)
    """Probability of each training task per sample, e.g. {t2v: 0.5, i2v: 0.3, extend:
    0.2}: t2v (text only), i2v (the first frame, encoded as an image, given at latent frame 0), extend (the first k latent frames),
    interpolate (every n-th latent frame), upsample (a 2x-degraded copy of every frame).
    Empty: t2v only. Any task but t2v needs model.cond_channels = model.in_channels + 1."""
    extend_frames: int = 0
    """Latent frames given to the extend task; 0 draws k per sample from 1..T'-1."""
    interpolate_every: int = 2
    """The interpolate task gives latent frames 0, n, 2n, ... with n = this."""
    cond_noise_max: float = 0.1
    """Noise augmentation of the conditioning (Emu Video): each sample's given latents
    become (1 - a) latent + a noise with a uniform in [0, this]; 0 disables."""
    upsample_blur_max: float = 1.0
    """Degradation of the upsample task's low-resolution input: a Gaussian blur with sigma
    uniform in [0, this] latent pixels (on video pixels: times the spatial compression),
    plus the conditioning noise above."""
    loss_on_given_frames: bool = False
    """Count the given frames of i2v/extend/interpolate in the loss too. Off: the loss
    covers only the frames the model must generate (a sampler keeps the given frames on
    their known path)."""
    trainable: list[str] = field(default_factory=list)
    """Glob patterns over parameter names (e.g. "blocks.*.attn.*", "patch_embed.*"):
    only matching parameters train; the rest are frozen (no gradient, no optimizer state,
    no gradient reduce-scatter). Empty: everything trains."""

    def validate(self) -> None:
        check(self.steps >= 0, "train.steps", "must be >= 0")
        check(self.lr > 0, "train.lr", "must be > 0")
        check_choice(self.lr_schedule, "train.lr_schedule", ("constant", "cosine"))
        check_choice(self.mixed_precision, "train.mixed_precision", ("auto", "bf16", "fp32"))
        check_choice(self.device, "train.device", ("auto", "cuda", "cpu"))
        check(self.log_every >= 1, "train.log_every", "must be >= 1")
        check(self.val_every >= 1, "train.val_every", "must be >= 1")
        check(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        check(self.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 disables clipping)")
        check_choice(self.position_resize, "train.position_resize", ("interpolate", "extend"))
        check(self.sample_every >= 0, "train.sample_every", "must be >= 0 (0: no samples)")
        check(not self.sample_every or self.sample_prompts, "train.sample_prompts",
              "train.sample_every is set but there is no prompt to sample: give at least one, "
              "e.g. --train.sample_prompts='[\"a red circle moves from right to left\"]'")
        check(all(p.strip() for p in self.sample_prompts), "train.sample_prompts",
              "a prompt is empty")
        for name, p in self.tasks.items():  # the names: check_job (moviegen.conditioning.TASKS)
            check(isinstance(p, (int, float)) and p >= 0, f"train.tasks.{name}",
                  f"{p!r} is not a probability (a number >= 0)")
        check(not self.tasks or sum(self.tasks.values()) > 0, "train.tasks",
              "the probabilities sum to 0: give at least one task a positive one")
        check(self.extend_frames >= 0, "train.extend_frames", "must be >= 0 (0: drawn)")
        check(self.interpolate_every >= 2, "train.interpolate_every",
              "must be >= 2 (1 would give every frame)")
        check(0 <= self.cond_noise_max < 1, "train.cond_noise_max", "must be in [0, 1)")
        check(self.upsample_blur_max >= 0, "train.upsample_blur_max", "must be >= 0")
        check(all(isinstance(p, str) and p.strip() for p in self.trainable),
              "train.trainable", "a pattern is empty")


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
    ac_full_blocks: int = 0
    """With ac=selective: this many blocks (the first ones) are fully recomputed instead, to
    fit a memory budget (benchmarks/plan.py --ac budget picks the number)."""
    compile: bool = False
    """torch.compile each transformer block."""
    param_dtype: str = "auto"
    """FSDP compute dtype of gathered parameters: auto (bf16 on CUDA, fp32 on CPU), bf16,
    fp32."""
    reduce_dtype: str = "fp32"
    """FSDP gradient reduction dtype: fp32 or bf16."""

    def validate(self) -> None:
        for k in ("dp_replicate", "cp", "tp"):
            check(getattr(self, k) >= 1, f"parallel.{k}", "must be >= 1")
        check(self.dp_shard == -1 or self.dp_shard >= 1, "parallel.dp_shard",
              "must be >= 1 or -1")
        check_choice(self.ac, "parallel.ac", AC_MODES)
        check(self.ac_full_blocks >= 0, "parallel.ac_full_blocks", "must be >= 0")
        check_choice(self.param_dtype, "parallel.param_dtype", ("auto", "bf16", "fp32"))
        check_choice(self.reduce_dtype, "parallel.reduce_dtype", ("fp32", "bf16"))


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

    def validate(self) -> None:
        check(self.every_steps >= 0, "checkpoint.every_steps", "must be >= 0")
        check(self.keep_last >= 0, "checkpoint.keep_last", "must be >= 0")
        check(self.ema_decay == 0.0 or 0.0 < self.ema_decay < 1.0, "checkpoint.ema_decay",
              "must be 0 (off) or in (0, 1)")
        check(self.max_consecutive_nonfinite >= 0, "checkpoint.max_consecutive_nonfinite",
              "must be >= 0")
        if self.resume_from is not None:
            check(os.path.isfile(os.path.join(self.resume_from, ".metadata")),
                  "checkpoint.resume_from",
                  f"'{self.resume_from}' is not a checkpoint directory (no .metadata; give "
                  f"<output_dir>/checkpoints/step_N)")


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

    def validate(self) -> None:
        check(all(s >= 1 for s in self.profile_steps), "metrics.profile_steps",
              "steps are 1-based")


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

    def validate(self) -> None:
        """Rules between sections that need no data or model code (the others:
        moviegen.training.diffusion.check_job)."""
        check_output_dir(self.output_dir)
        if self.data.kind == "video" and self.data.encoder == "tae":
            channels = _tae_latent_channels(self.data.tae_checkpoint)
            check(channels == self.model.in_channels, "model.in_channels",
                  f"{self.model.in_channels}, but the TAE in '{self.data.tae_checkpoint}' "
                  f"makes {channels}-channel latents (set model.in_channels={channels})")

        if self.train.init_from is not None:
            check(os.path.exists(os.path.join(self.train.init_from, "model.safetensors")),
                  "train.init_from", f"no model.safetensors in '{self.train.init_from}' (give "
                  f"an export directory, e.g. <output_dir>/final of the previous stage)")

        if self.data.kind == "synthetic_latents":
            check(self.data.latent_height % self.model.patch_size[1] == 0, "data.latent_height",
                  f"{self.data.latent_height} is not divisible by the patch height "
                  f"{self.model.patch_size[1]}")
            check(self.data.latent_width % self.model.patch_size[2] == 0, "data.latent_width",
                  f"{self.data.latent_width} is not divisible by the patch width "
                  f"{self.model.patch_size[2]}")


def _tae_latent_channels(tae_dir: str) -> int:
    """Latent channels of a trained TAE, from its tae_config.json (no weights read)."""
    import json

    path = os.path.join(tae_dir, "tae_config.json")
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"data.tae_checkpoint: cannot read {path} ({e})",
                          key="data.tae_checkpoint") from None
    return raw.get("latent_channels") or TAE_PRESETS[raw.get("preset", "tiny")]["latent_channels"]
