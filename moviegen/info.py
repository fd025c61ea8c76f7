"""Parameters, FLOPs and tokens of a model size, as JSON (built on the meta device).

    python -m moviegen.info --model 30b --seq_len 73728
    python -m moviegen.info --model 30b --height 768 --width 768 --frames 256

    python -m moviegen.info --model 30b --world 6144 --tp 8 --cp 4 --ac selective
    python -m moviegen.info --model 30b --seq_len 73728 --attention_pattern window

Parameters are counted from the module itself (no memory: meta device), with the real
text-encoder widths (UL2 4096, ByT5 1472, MetaCLIP 1024) for the large sizes. FLOPs per
training sample follow moviegen.models.flops (forward + backward, recomputation not credited).
``memory_per_gpu`` (GB = 1e9 bytes) for the layout given by --world/--dp_replicate/--cp/
--tp/--ac, from the same memory model as benchmarks/plan.py (moviegen/parallel/memory_model.py):
the real ``parallelize`` on a fake process group of --world ranks, parameter/gradient/
AdamW bytes read from rank 0's shards (fp32 master), the FSDP working set, and the
activation peak for one sample per CP x TP group, and the context-parallel bytes per
step and per block forward. With --attention_pattern window the FLOPs are those of the
windows (W.A.L.T), next to full attention's for comparison.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

from moviegen.config import check, run_cli
from moviegen.models.transformer import MODEL_REGISTRY
from moviegen.planning import memory_per_gpu, model_info


@dataclass
class InfoArgs:
    model: str = "30b"
    """Registered size: 30b, 7b, 5b, 1b or tiny."""
    seq_len: Optional[int] = None
    """Video tokens per sample (default: from --height/--width/--frames)."""
    height: int = 768
    """Video height in pixels (tokens: / 16)."""
    width: int = 768
    """Video width in pixels (tokens: / 16)."""
    frames: int = 256
    """Video frames (tokens: / 8)."""
    text_len: Optional[int] = None
    """Text tokens (default 3 x 256: UL2, ByT5, MetaCLIP)."""
    world: int = 6144
    """GPUs of the layout for memory_per_gpu."""
    dp_replicate: int = 1
    """HSDP replicas."""
    cp: int = 4
    """Context parallel degree."""
    tp: int = 8
    """Tensor parallel degree."""
    ac: str = "selective"
    """Activation checkpointing: none, selective or full."""
    gpu_mem_gb: float = 80.0
    """Memory per GPU: 80 (H100) or 141 (H200)."""
    attention_pattern: str = "full"
    """Self-attention: full, or window (W.A.L.T spatial / spatiotemporal windows)."""
    spatial_window: list[int] = field(default_factory=lambda: [16, 16])
    """[h, w] patches of the spatial windows (--attention_pattern window)."""
    spatiotemporal_window: list[int] = field(default_factory=lambda: [8, 8, 8])
    """[t, h, w] patches of the spatiotemporal windows (--attention_pattern window)."""

    def validate(self) -> None:
        check(self.model in MODEL_REGISTRY, "model",
              f"'{self.model}' is not registered ({', '.join(MODEL_REGISTRY)})")
        check(self.attention_pattern in ("full", "window"), "attention_pattern",
              f"'{self.attention_pattern}' is not one of full, window")
        check(len(self.spatial_window) == 2 and min(self.spatial_window) >= 1,
              "spatial_window", f"expected two positive ints, got {self.spatial_window}")
        check(len(self.spatiotemporal_window) == 3 and min(self.spatiotemporal_window) >= 1,
              "spatiotemporal_window",
              f"expected three positive ints, got {self.spatiotemporal_window}")
        check(self.ac in ("none", "selective", "full"), "ac",
              f"'{self.ac}' is not one of none, selective, full")
        for k in ("world", "dp_replicate", "cp", "tp", "height", "width", "frames"):
            check(getattr(self, k) >= 1, k, "must be >= 1")
        check(self.world % (self.dp_replicate * self.cp * self.tp) == 0, "world",
              f"{self.world} is not divisible by dp_replicate x cp x tp = "
              f"{self.dp_replicate * self.cp * self.tp}")


def run(a: InfoArgs) -> dict:
    window = {"attention_pattern": a.attention_pattern, "spatial_window": a.spatial_window,
              "spatiotemporal_window": a.spatiotemporal_window}
    info = model_info(a.model, a.seq_len, a.height, a.width, a.frames, a.text_len, **window)
    info["memory_per_gpu"] = memory_per_gpu(a.model, info["seq_len"], info["text_len"],
                                            a.world, a.dp_replicate, a.cp, a.tp, a.ac,
                                            a.gpu_mem_gb, window=window)
    print(json.dumps(info, indent=2))
    return info


def main(argv=None) -> dict:
    return run_cli(run, InfoArgs, argv, __doc__, config_file=False)


if __name__ == "__main__":
    main()
