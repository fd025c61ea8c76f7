"""Precompute TAE latents and text embeddings once, then train from them.

    python -m moviegen.precompute --config launch/configs/demo.yaml
    torchrun --nproc_per_node=4 -m moviegen.precompute --config ...   # split over ranks

Runs where training would (``train.device``: auto takes this rank's GPU and NCCL when
there is one, else the CPU and gloo).

Reads the video/image files of ``data.video`` (train and val splits) through the data
loader, encodes pixels with the frozen TAE of ``data.tae_checkpoint`` (scaled latents)
and captions with the configured text encoders, and writes sharded safetensors under
``data.precomputed_dir`` (format: moviegen/data/precomputed.py). A rerun skips finished
shards and rewrites the index. Train on them with ``data.kind: precomputed``.
"""
from __future__ import annotations

import logging
import os
import sys
import time

import torch

from moviegen.config import ConfigError, JobConfig, check, run_cli
from moviegen.data.precomputed import SPLITS, precompute_split, write_index

logger = logging.getLogger("moviegen.precompute")


def run(cfg, device: torch.device) -> dict:
    from moviegen.data.sources import TAELatentEncoder
    from moviegen.models.text_encoders import TextEncoders
    from moviegen.training.distributed import global_rank, start_process_group, world_size

    rank, world = global_rank(), world_size()
    if world > 1:
        start_process_group(device)
    out_dir = cfg.data.precomputed_dir
    os.makedirs(out_dir, exist_ok=True)
    encoder = TAELatentEncoder(cfg.data.tae_checkpoint).to(device)
    text_encoders = TextEncoders(cfg.text).to(device)
    report = {}
    for split in SPLITS:
        t0 = time.perf_counter()
        with _counting_bar(encoder, f"precompute {split}", rank == 0):
            report[split] = precompute_split(cfg, split, out_dir, rank, world, encoder,
                                             text_encoders, device)
        report[split]["seconds"] = round(time.perf_counter() - t0, 1)
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        report["index"] = write_index(out_dir, cfg, text_encoders.out_dims)["num_samples"]
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return report


class _counting_bar:
    """A bar counting the batches the encoder encodes (terminal only; no total known)."""

    def __init__(self, encoder, desc: str, enabled: bool):
        self.encoder, self.desc, self.enabled = encoder, desc, enabled

    def __enter__(self):
        from moviegen.training.metrics import ProgressBar

        self.bar = ProgressBar(None, 0, self.enabled, desc=self.desc)
        encode = self.encoder.encode

        def counted(x):
            out = encode(x)
            self.bar.update(1)
            return out

        self.encoder.encode = counted
        return self

    def __exit__(self, *exc):
        del self.encoder.encode  # the class's method again
        self.bar.close()


def summary(report: dict, out_dir: str) -> str:
    """One line: batches written per split, time, the index."""
    parts = [f"{s} {r['written']} shards written"
             + (f" ({r['already_done']} already done)" if r["already_done"] else "")
             + (f", {r['skipped_files']} unreadable files skipped" if r["skipped_files"] else "")
             + f" in {r['seconds']:.0f} s" for s, r in report.items() if s in SPLITS]
    n = report.get("index", "?")
    n = " + ".join(f"{v} {k}" for k, v in n.items()) if isinstance(n, dict) else n
    return f"precompute: {'; '.join(parts)}; {n} samples in {out_dir}"


def _run_checked(cfg: JobConfig) -> dict:
    from moviegen.training.distributed import pick_device

    try:
        check(cfg.data.precomputed_dir is not None, "data.precomputed_dir",
              "set where the shards go")
        device = pick_device(cfg.train.device)  # as training picks it: a GPU when there is one
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2)
    logger.info("encoding on %s", device)
    report = run(cfg, device)
    if int(os.environ.get("RANK", 0)) == 0:
        print(summary(report, cfg.data.precomputed_dir), flush=True)
    return report


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        stream=sys.stdout)
    argv = list(sys.argv[1:] if argv is None else argv)
    # what is read and how: video files through the run's TAE, whatever data.kind says
    return run_cli(_run_checked, JobConfig, argv + ["--data.kind=video", "--data.encoder=tae"],
                   __doc__)


if __name__ == "__main__":
    main()
