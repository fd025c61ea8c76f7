"""The epoch plan: which rows go in which batch, on which data-parallel rank.

The plan is a pure function of (bucket ids, bucket batch sizes, seed, epoch, split,
dp_size); every rank computes the same global plan and takes its own slice, so TP/CP
peers (same dp_rank) see identical batches and DP ranks never overlap. Resuming needs
only (epoch, batch index): the plan is recomputed, not stored.

Global batch k holds `batch_size x dp_size` rows of one bucket; rank r takes the r-th
contiguous share. With drop_last=False a bucket's last, partial global batch is split as
evenly as possible (and wrapped around inside the bucket when it has fewer rows than
ranks), so each sample appears once per epoch.

Per-sample randomness (temporal window start, crop position) is drawn with the plan,
three uniforms per sample, so it is reproducible too; the val split uses 0.5 (centre).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moviegen.data.buckets import Bucket

_SPLIT_ID = {"train": 0, "val": 1}


@dataclass
class EpochPlan:
    rows: np.ndarray          # int64 [S]: manifest rows in global batch order
    uniforms: np.ndarray      # float64 [S, 3]: (time, y, x) uniforms in [0, 1)
    batch_bucket: np.ndarray  # int64 [B]: bucket index of each global batch
    batch_offsets: np.ndarray  # int64 [B + 1]: global batch k is rows[off[k]:off[k+1]]

    def __len__(self) -> int:
        return len(self.batch_bucket)

    def rank_slice(self, k: int, dp_rank: int, dp_size: int) -> slice:
        """This rank's share of global batch k, as a slice of `rows`."""
        lo, hi = int(self.batch_offsets[k]), int(self.batch_offsets[k + 1])
        n = hi - lo
        base, extra = divmod(n, dp_size)
        start = lo + dp_rank * base + min(dp_rank, extra)
        return slice(start, start + base + (1 if dp_rank < extra else 0))


def _global_batches(rows: np.ndarray, per_rank: int, dp_size: int, drop_last: bool):
    """Split one bucket's (already ordered) rows into global batches."""
    g = per_rank * dp_size
    out = [rows[i:i + g] for i in range(0, len(rows), g)]
    if out and len(out[-1]) < g:
        if drop_last:
            out.pop()
        elif len(out[-1]) < dp_size:
            # fewer rows than ranks: wrap around inside the bucket so no rank is empty
            need = dp_size - len(out[-1])
            out[-1] = np.concatenate([out[-1], np.resize(rows, need)])
    return out


def build_epoch_plan(bucket_ids: np.ndarray, buckets: list[Bucket], *, seed: int, epoch: int,
                     split: str, dp_size: int, shuffle: bool, drop_last: bool,
                     image_ratio: float | None) -> EpochPlan:
    """Plan of one epoch. `bucket_ids` is per manifest row (-1 = not in this split)."""
    train = split == "train"
    rng = np.random.default_rng([int(seed), int(epoch), _SPLIT_ID[split]])
    do_shuffle = shuffle and train
    video_batches, image_batches = [], []   # lists of (bucket index, rows)
    for b_i, bucket in enumerate(buckets):
        rows = np.flatnonzero(bucket_ids == b_i)
        if rows.size == 0:
            continue
        if do_shuffle:
            rows = rng.permutation(rows)
        target = video_batches if bucket.kind == "video" else image_batches
        target.extend((b_i, r) for r in _global_batches(rows, bucket.batch_size, dp_size,
                                                       drop_last))
    if do_shuffle:
        video_batches = [video_batches[i] for i in rng.permutation(len(video_batches))]
        image_batches = [image_batches[i] for i in rng.permutation(len(image_batches))]
    if image_ratio is not None and video_batches and image_batches:
        want = int(round(image_ratio * len(video_batches)))
        pool, chosen = image_batches, []
        while len(chosen) < want:  # cycle through the images, reshuffled each pass
            chosen.extend(pool[: want - len(chosen)])
            if do_shuffle:
                pool = [image_batches[i] for i in rng.permutation(len(image_batches))]
        image_batches = chosen
    # interleave: image batches spread evenly between video batches
    keys = [(i + 0.5) / max(1, len(video_batches)) for i in range(len(video_batches))]
    keys += [(j + 0.5) / max(1, len(image_batches)) for j in range(len(image_batches))]
    batches = video_batches + image_batches
    order = np.argsort(np.asarray(keys), kind="stable") if batches else np.zeros(0, np.int64)
    batches = [batches[i] for i in order]

    sizes = np.asarray([len(r) for _, r in batches], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    rows = (np.concatenate([r for _, r in batches]).astype(np.int64) if batches
            else np.zeros(0, np.int64))
    if train:
        uniforms = rng.random((len(rows), 3))
    else:
        uniforms = np.full((len(rows), 3), 0.5)
    return EpochPlan(rows=rows, uniforms=uniforms,
                     batch_bucket=np.asarray([b for b, _ in batches], np.int64),
                     batch_offsets=offsets)
