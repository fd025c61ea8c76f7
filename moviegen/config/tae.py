"""The TAE training job: its own model, data and loss sections, and the transformer job's
train / checkpoint / metrics / parallel sections (the same keys, the same trainer); the
shared keys that only the transformer reads (``TAE_NOT_READ``) are refused when set.

    python -m moviegen.train_tae --config launch/configs/tae_tiny.yaml --data.data_dir=DIR
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from moviegen.config.core import check, check_choice, check_output_dir
from moviegen.config.job import CheckpointConfig, MetricsConfig, ParallelConfig, TrainConfig
from moviegen.models.sizes import TAEConfig


@dataclass
class TAEDataConfig:
    data_dir: str = ""
    """Folder of clips searched recursively for video files, or a moviegen.data dataset
    (its manifest.jsonl gives the files and the train/val split). Empty: <output_dir>/data."""
    generate_if_missing: int = 48
    """If data_dir holds no clips, write this many synthetic moving-shape clips there first
    (python -m moviegen.data.synthetic; 0: fail instead)."""
    num_frames: int = 8
    """Frames per training clip (any count encodes; multiples of the temporal compression
    waste nothing)."""
    fps: float = 8.0
    """Frame rate the training clips are sampled at (a clip of num_frames spans
    num_frames / fps seconds)."""
    height: int = 64
    """Training frame height: clips are resized and cropped to height x width (must divide
    by the spatial compression). Held-out clips are reconstructed at full frame size."""
    width: int = 64
    """Training frame width."""
    batch_size: int = 4
    """Video clips per data-parallel rank on video steps."""
    image_batch_size: int = 8
    """Images (single frames drawn from the step's clips) per rank on image steps."""
    image_every: int = 4
    """Every this-many-th step is an image step (4: one image batch per three video batches,
    as in Movie Gen; 0: videos only)."""
    augment: bool = True
    """Random RGB channel order, horizontal flip and time reversal per training clip: a small
    synthetic set has few distinct colours, and the TAE should not learn only those."""
    num_val: int = 4
    """Clips held out for PSNR and latent statistics (a manifest's val rows when it has
    enough, else the last clips in path order)."""
    val_frames: int = 17
    """Frames of each held-out clip that are reconstructed (odd on purpose: padding is tested)."""
    backend: str = "auto"
    """Decoder of the training clips: auto, dali or pyav (see data.video.backend)."""
    num_workers: int = 1
    """Decode workers (PyAV DataLoader processes or DALI threads)."""
    cache_decoded_mb: int = 2048
    """Keep decoded clips in memory up to this many MB per decoding process, so each file is
    decoded once, not once per batch (with backend auto this decodes with PyAV); 0: off."""
    max_skip_fraction: float = 0.05
    """Stop when more than this fraction of the files seen cannot be decoded (each skipped
    file is logged with its reason and counted in metrics.jsonl's skipped_files)."""

    def validate(self) -> None:
        for k in ("num_frames", "batch_size", "image_batch_size", "num_val", "val_frames",
                  "height", "width"):
            check(getattr(self, k) >= 1, f"data.{k}", "must be >= 1")
        check(self.image_every >= 0, "data.image_every", "must be >= 0")
        check(self.fps > 0, "data.fps", "must be > 0")
        check_choice(self.backend, "data.backend", ("auto", "dali", "pyav"))
        check(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        check(self.cache_decoded_mb >= 0, "data.cache_decoded_mb", "must be >= 0")
        check(0.0 <= self.max_skip_fraction <= 1.0, "data.max_skip_fraction",
              "must be in [0, 1]")


@dataclass
class TAELossConfig:
    l1_weight: float = 1.0
    """Weight of the L1 reconstruction loss."""
    mse_weight: float = 1.0
    """Weight of the MSE reconstruction loss."""
    opl_weight: float = 0.1
    """Weight of the outlier penalty loss on the latent means (Movie Gen)."""
    opl_r: float = 3.0
    """OPL radius in standard deviations (Movie Gen: 3)."""
    kl_weight: float = 1e-6
    """Weight of KL(q(z|x) || N(0, I)) (variational TAE only)."""
    perceptual_weight: float = 0.0
    """Weight of the VGG16-feature loss; needs perceptual_weights (nothing is downloaded)."""
    perceptual_weights: Optional[str] = None
    """Local .safetensors with torchvision-named VGG16 'features.N.weight/bias' tensors."""
    adversarial_weight: float = 0.0
    """Weight of the generator's hinge GAN loss (0: no discriminator is built)."""
    adversarial_start_step: int = 0
    """Step at which the discriminator and the adversarial term switch on."""

    def validate(self) -> None:
        if self.perceptual_weight > 0:
            check(self.perceptual_weights is not None
                  and os.path.isfile(self.perceptual_weights), "loss.perceptual_weights",
                  f"perceptual_weight > 0 needs a local VGG16 .safetensors file (got "
                  f"{self.perceptual_weights!r}); nothing is downloaded")


_TRANSFORMER_TASKS = "a conditioning-task setting of the transformer (python -m moviegen.train)"
_NO_BLOCK_PLAN = "applies to the transformer's blocks; the TAE has no such plan"
# The keys of the shared train / parallel / checkpoint sections that nothing in the TAE
# job reads: a value other than the default is refused (moviegen.config.core.check_keys_read).
TAE_NOT_READ = {
    "train.position_resize": "resizes the transformer's position tables on init_from; the "
                             "TAE has none",
    "train.sample_every": "the TAE has no sampler; every validation measures the held-out "
                          "PSNR and the export writes recon.gif",
    "train.sample_prompts": "the TAE takes no captions",
    "train.tasks": _TRANSFORMER_TASKS,
    "train.extend_frames": _TRANSFORMER_TASKS,
    "train.interpolate_every": _TRANSFORMER_TASKS,
    "train.cond_noise_max": _TRANSFORMER_TASKS,
    "train.upsample_blur_max": _TRANSFORMER_TASKS,
    "train.loss_on_given_frames": _TRANSFORMER_TASKS,
    "train.trainable": "freezes parts of the transformer; the TAE trains every weight",
    "parallel.tp": "the TAE has no tensor-parallel plan; it trains with FSDP over all ranks "
                   "(parallel.dp_shard, parallel.dp_replicate)",
    "parallel.cp": "the TAE has no context-parallel plan; it trains with FSDP over all ranks "
                   "(parallel.dp_shard, parallel.dp_replicate)",
    "parallel.ac": _NO_BLOCK_PLAN,
    "parallel.ac_full_blocks": _NO_BLOCK_PLAN,
    "parallel.compile": _NO_BLOCK_PLAN,
    "parallel.reduce_dtype": "the TAE's FSDP always reduces gradients in fp32",
    "checkpoint.ema_decay": "the TAE export writes the trained weights only (no EMA copy)",
}


def _tae_train_defaults() -> TrainConfig:
    return TrainConfig(steps=400, beta2=0.99, weight_decay=0.0, val_every=100)


@dataclass
class TAEJobConfig:
    output_dir: str = "runs/tae_tiny"
    """Metrics, checkpoints and the trained TAE (tae.safetensors + tae_config.json, what
    data.tae_checkpoint points at); reusing it resumes the run."""
    tae: TAEConfig = field(default_factory=TAEConfig)
    """TAE size (preset full or tiny, plus per-field overrides)."""
    data: TAEDataConfig = field(default_factory=TAEDataConfig)
    """Clips, frame size and the image/video interleave."""
    loss: TAELossConfig = field(default_factory=TAELossConfig)
    """Reconstruction, OPL, KL and the optional perceptual and adversarial terms."""
    train: TrainConfig = field(default_factory=_tae_train_defaults)
    """Optimisation (the same keys as the transformer's; val_every measures held-out PSNR)."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """FSDP over the ranks (dp_shard / dp_replicate); the TAE has no TP, CP, AC or compile
    plan."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpointing and resume (the same keys as the transformer's)."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """TensorBoard, wandb and profiler traces (metrics.jsonl is always written)."""
    NOT_READ: ClassVar[dict[str, str]] = TAE_NOT_READ

    def validate(self) -> None:
        check_output_dir(self.output_dir)
        cs = 2 ** (len(self.tae.resolved().channel_multipliers) - 1)
        for k in ("height", "width"):
            check(getattr(self.data, k) % cs == 0, f"data.{k}",
                  f"{getattr(self.data, k)} is not divisible by the spatial compression {cs}")
        if self.train.init_from is not None:
            check(os.path.isfile(os.path.join(self.train.init_from, "tae.safetensors")),
                  "train.init_from", f"no tae.safetensors in '{self.train.init_from}' (give "
                  f"the output_dir of an earlier python -m moviegen.train_tae run)")

    @property
    def clips_dir(self) -> str:
        return self.data.data_dir or os.path.join(self.output_dir, "data")
