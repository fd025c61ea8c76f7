"""Precomputed TAE latents + text embeddings: the shard format, its writer and its loader.

    <dir>/train/r<rank>_b<batch>.safetensors   one loader batch (one bucket, one shape):
                                               latents, first_frame_latents (each clip's
                                               first frame encoded alone, image-to-video's
                                               input), text.<slot>.emb/.mask
    <dir>/val/...
    <dir>/index.json                           shards, sample counts, shapes, encoders

Each shard is written to a temporary name and renamed, so a shard on disk is complete; a
rerun skips finished shards (the loader is seeked past them without decoding). The
trainer reads the shards with ``data.kind: precomputed`` (most video-DiT trainers' fast
path: no decode, no TAE and no text encoder per step). ``python -m moviegen.precompute``
is the command that writes them.
"""
from __future__ import annotations

import json
import os
import random

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from moviegen.config.video import SPLITS

def read_index(directory: str) -> dict:
    """``<directory>/index.json``; a clear error when it is missing or unreadable."""
    path = os.path.join(directory, "index.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist (python -m moviegen.precompute "
                                f"writes it)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); rerun python -m moviegen.precompute"
                         ) from None

def latent_shapes(directory: str) -> list[tuple[str, int, int, int]]:
    """(bucket, T', H', W') of every latent shape in a precomputed set (from its index)."""
    seen = {}
    for shard in read_index(directory)["shards"]:
        _, T, H, W = shard["latent_shape"]
        seen.setdefault((T, H, W), shard["bucket"])
    return [(name, T, H, W) for (T, H, W), name in seen.items()]

def shard_name(rank: int, batch_index: int) -> str:
    return f"r{rank:04d}_b{batch_index:06d}.safetensors"

def _seek(loader, batch_index: int) -> None:
    """Moves a fresh loader to ``batch_index`` of epoch 0 without decoding anything."""
    state = loader.state_dict()
    state["epoch"], state["batch_index"] = 0, batch_index
    loader.load_state_dict(state)

def precompute_split(cfg, split: str, out_dir: str, rank: int, world: int, encoder,
                     text_encoders, device) -> dict:
    from moviegen.data.loader import build_video_loader

    split_dir = os.path.join(out_dir, split)
    os.makedirs(split_dir, exist_ok=True)
    loader = build_video_loader(cfg.data.video, dp_rank=rank, dp_size=world,
                                seed=cfg.train.seed, split=split)
    total = loader.batches_per_epoch()
    done = {k for k in range(total) if os.path.exists(os.path.join(split_dir, shard_name(rank, k)))}
    written = skipped_existing = 0
    k = 0
    while k < total:
        if k in done:
            k += 1
            skipped_existing += 1
            continue
        if loader.epoch != 0 or loader.batch_index != k:
            _seek(loader, k)
        batch = next(loader)
        produced = loader.batch_index - 1 if loader.epoch == 0 else total - 1
        video = batch["video"].to(device)
        with torch.no_grad():
            latents = encoder.encode(video).float().cpu()
            # the first frame alone, as image-to-video is given it (an image)
            first = encoder.encode(video[:, :, :1]).float().cpu()
            embeds, masks = text_encoders.encode(batch["captions"])
        tensors = {"latents": latents.contiguous(), "first_frame_latents": first.contiguous()}
        for name in embeds:
            tensors[f"text.{name}.emb"] = embeds[name].float().cpu().contiguous()
            tensors[f"text.{name}.mask"] = masks[name].cpu().contiguous()
        meta = {"captions": json.dumps(batch["captions"]), "bucket": batch["bucket"],
                "paths": json.dumps(batch["paths"])}
        final = os.path.join(split_dir, shard_name(rank, produced))
        tmp = final + ".tmp"
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, final)
        written += 1
        k = produced + 1 if loader.epoch == 0 else total
    loader.close()
    return {"written": written, "already_done": skipped_existing,
            "skipped_files": loader.stats()["skipped_files"]}

def write_index(out_dir: str, cfg, text_dims: dict) -> dict:
    shards = []
    for split in SPLITS:
        split_dir = os.path.join(out_dir, split)
        if not os.path.isdir(split_dir):
            continue
        for fname in sorted(os.listdir(split_dir)):
            if not fname.endswith(".safetensors"):
                continue
            path = os.path.join(split, fname)
            with safe_open(os.path.join(out_dir, path), framework="pt") as f:
                shape = list(f.get_slice("latents").get_shape())
                bucket = f.metadata()["bucket"]
            shards.append({"file": path, "split": split, "bucket": bucket,
                           "num_samples": shape[0], "latent_shape": shape[1:]})
    index = {"version": 1, "shards": shards, "text_dims": text_dims,
             "tae_checkpoint": cfg.data.tae_checkpoint,
             "num_samples": {s: sum(x["num_samples"] for x in shards if x["split"] == s)
                             for s in SPLITS}}
    tmp = os.path.join(out_dir, "index.json.tmp")
    with open(tmp, "w") as f:
        json.dump(index, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, "index.json"))
    return index

class PrecomputedLoader:
    """Batches of precomputed latents + text embeddings, resumable and DP-sharded.

    A global batch holds samples of one bucket (one latent shape). Per epoch the samples
    of each bucket are shuffled with (seed, epoch) and cut into global batches of
    batch_size x dp_size (a bucket's last batch is filled up with its first samples, so
    every sample is seen each epoch and every batch is full); the batch order is shuffled
    too, and rank r takes the r-th contiguous share of each. The plan depends on
    (seed, epoch, global batch size) only, so a run resumes on any data-parallel size
    with the same global batch; ``index`` gives each sample's place in its global batch.
    """

    def __init__(self, directory: str, split: str, batch_size: int, dp_rank: int,
                 dp_size: int, seed: int, max_open_shards: int = 16):
        with open(os.path.join(directory, "index.json")) as f:
            self.index = json.load(f)
        self.dir, self.split, self.batch_size = directory, split, batch_size
        self.dp_rank, self.dp_size, self.seed = dp_rank, dp_size, seed
        self.shards = [s for s in self.index["shards"] if s["split"] == split]
        if not self.shards:
            raise RuntimeError(f"{directory}/index.json lists no '{split}' shards "
                               f"(rerun python -m moviegen.precompute)")
        self.by_bucket: dict[str, list[tuple[int, int]]] = {}
        for si, s in enumerate(self.shards):
            self.by_bucket.setdefault(s["bucket"], []).extend((si, i) for i in range(s["num_samples"]))
        self.epoch, self.batch_index = 0, 0
        self._plan_epoch, self._plan_cache = None, []
        self._cache: dict[int, dict] = {}
        self._max_open = max_open_shards
        if self.batches_per_epoch() == 0:
            raise RuntimeError(f"{directory}: {split} split has too few samples for "
                               f"{dp_size} data-parallel ranks")

    def _plan(self, epoch: int) -> list[list[tuple[int, int]]]:
        """The epoch's global batches (lists of (shard, row)), the same on every rank."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        size = self.batch_size * self.dp_size
        batches = []
        for bucket in sorted(self.by_bucket):
            items = list(self.by_bucket[bucket])
            if self.split == "train":
                rng.shuffle(items)
            for i in range(0, len(items), size):
                batch = items[i:i + size]
                while len(batch) < size:  # fill the last batch from the bucket's start
                    batch += items[:size - len(batch)]
                batches.append(batch)
        if self.split == "train":
            rng.shuffle(batches)
        return batches

    def _share(self, n: int) -> tuple[int, int]:
        """[lo, hi) of this rank's part of a global batch of n samples."""
        base, extra = divmod(n, self.dp_size)
        lo = self.dp_rank * base + min(self.dp_rank, extra)
        return lo, lo + base + (1 if self.dp_rank < extra else 0)

    def _epoch_plan(self, epoch: int) -> list[list[tuple[int, int]]]:
        """The plan of ``epoch``, computed once per epoch rather than once per batch."""
        if self._plan_epoch != epoch:
            self._plan_cache, self._plan_epoch = self._plan(epoch), epoch
        return self._plan_cache

    def batches_per_epoch(self) -> int:
        return len(self._epoch_plan(self.epoch))

    def _shard(self, si: int) -> dict:
        if si not in self._cache:
            if len(self._cache) >= self._max_open:
                self._cache.pop(next(iter(self._cache)))
            path = os.path.join(self.dir, self.shards[si]["file"])
            with safe_open(path, framework="pt") as f:
                data = {k: f.get_tensor(k) for k in f.keys()}
                data["captions"] = json.loads(f.metadata()["captions"])
            self._cache[si] = data
        return self._cache[si]

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        plan = self._epoch_plan(self.epoch)
        if self.batch_index >= len(plan):
            self.epoch, self.batch_index = self.epoch + 1, 0
            plan = self._epoch_plan(self.epoch)
        lo, hi = self._share(len(plan[self.batch_index]))
        items = plan[self.batch_index][lo:hi]
        self.batch_index += 1
        shards = [self._shard(si) for si, _ in items]
        latents = torch.stack([sh["latents"][i] for sh, (_, i) in zip(shards, items)])
        names = [k[len("text."):-len(".emb")] for k in shards[0] if k.endswith(".emb")]
        embeds = {n: torch.stack([sh[f"text.{n}.emb"][i] for sh, (_, i) in zip(shards, items)])
                  for n in names}
        masks = {n: torch.stack([sh[f"text.{n}.mask"][i] for sh, (_, i) in zip(shards, items)])
                 for n in names}
        out = {"latents": latents, "text_embeds": embeds, "text_masks": masks,
               "captions": [sh["captions"][i] for sh, (_, i) in zip(shards, items)],
               "index": torch.arange(lo, hi)}
        if all("first_frame_latents" in sh for sh in shards):  # image-to-video's input
            out["first_frame_latents"] = torch.stack(
                [sh["first_frame_latents"][i] for sh, (_, i) in zip(shards, items)])
        return out

    def state_dict(self) -> dict:
        """``batch_index`` counts global batches: the same position on any layout."""
        return {"epoch": self.epoch, "batch_index": self.batch_index, "seed": self.seed,
                "global_batch": self.batch_size * self.dp_size,
                "dp_rank": self.dp_rank, "dp_size": self.dp_size}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch_index = int(state["epoch"]), int(state["batch_index"])
        saved = state.get("global_batch", self.batch_size * state.get("dp_size", self.dp_size))
        if saved != self.batch_size * self.dp_size:  # another plan: restart the epoch
            import logging
            logging.getLogger("moviegen.data").warning(
                "the checkpoint's global batch (%d) differs from this run's (%d): epoch %d "
                "restarts (set data.global_batch_size to keep it)", saved,
                self.batch_size * self.dp_size, self.epoch)
            self.batch_index = 0

    def stats(self) -> dict:
        return {"skipped_files": 0, "seen_files": 0}
