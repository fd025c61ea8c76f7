"""Generated latent videos whose content follows the caption (no files needed).

Sample i is a Gaussian blob in a [16, T, H, W] latent: its colour (a fixed 16-channel
signature) and its direction of motion are named in the caption, e.g. "a red blob moves
from left to right". The model can only lower the loss on the blob by reading the
caption, so the tiny demo shows that text conditioning is learnt.

The loader has every data source's interface (moviegen.data.sources.BatchLoader):
infinite iteration, global batches split over data-parallel ranks only, order fixed by
(seed, epoch), ``state_dict`` / ``load_state_dict`` for exact resume on any layout.
"""
from __future__ import annotations

import torch

from moviegen.models.tokenizer import fps_prefix

BLOB_COLORS = ("red", "green", "blue", "yellow")
DIRECTIONS = {  # name -> (d_row, d_col) per unit time
    ("left", "right"): (0.0, 1.0),
    ("right", "left"): (0.0, -1.0),
    ("top", "bottom"): (1.0, 0.0),
    ("bottom", "top"): (-1.0, 0.0),
}
DIRECTION_NAMES = list(DIRECTIONS)


def colour_signature(colour: str, channels: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + BLOB_COLORS.index(colour))
    sig = torch.randn(channels, generator=g)
    return sig / sig.norm() * channels ** 0.5


def caption_for(colour: str, direction: tuple[str, str]) -> str:
    return f"a {colour} blob moves from {direction[0]} to {direction[1]}"


def make_latent(colour: str, direction: tuple[str, str], shape_CTHW, generator: torch.Generator):
    """One blob video in latent space, roughly unit variance where the blob is."""
    C, T, H, W = shape_CTHW
    d_row, d_col = DIRECTIONS[direction]
    radius = 0.18 + 0.07 * torch.rand((), generator=generator).item()
    # start so that the blob crosses most of the frame along its direction
    across = 0.15 + 0.1 * torch.rand((), generator=generator).item()
    other = 0.3 + 0.4 * torch.rand((), generator=generator).item()
    rows = (torch.arange(H).float() + 0.5) / H
    cols = (torch.arange(W).float() + 0.5) / W
    sig = colour_signature(colour, C)
    frames = []
    for ti in range(T):
        frac = ti / max(T - 1, 1)
        pos = across + 0.7 * frac
        r0 = (pos if d_row > 0 else 1 - pos) if d_row != 0 else other
        c0 = (pos if d_col > 0 else 1 - pos) if d_col != 0 else other
        blob = torch.exp(-((rows[:, None] - r0) ** 2 + (cols[None, :] - c0) ** 2) / (2 * radius ** 2))
        frames.append(blob)
    blob_THW = torch.stack(frames)
    latent = sig[:, None, None, None] * blob_THW[None] * 1.5
    latent += 0.05 * torch.randn(latent.shape, generator=generator)
    return latent


class SyntheticLatentDataset:
    def __init__(self, num_samples: int, shape_CTHW, seed: int, fps: int = 16,
                 combos: list[tuple[str, tuple[str, str]]] | None = None):
        self.num_samples = num_samples
        self.shape = tuple(shape_CTHW)
        self.seed = seed
        self.fps = fps
        self.combos = combos or [(c, d) for c in BLOB_COLORS for d in DIRECTION_NAMES]

    def __len__(self):
        return self.num_samples

    def __getitem__(self, i: int):
        colour, direction = self.combos[i % len(self.combos)]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        latent = make_latent(colour, direction, self.shape, g)
        return latent, fps_prefix(caption_for(colour, direction), self.fps)


class SyntheticLatentLoader:
    """Infinite, resumable, DP-sharded batches of a ``SyntheticLatentDataset``.

    Global batch k of an epoch is samples [k G, (k + 1) G) of the epoch's order (G =
    batch_size x dp_size); rank r takes the r-th contiguous share. The order depends only
    on (seed, epoch), so any layout with the same G sees the same global batches, and the
    position is kept in global samples (exact resume on another data-parallel size)."""

    def __init__(self, dataset: SyntheticLatentDataset, batch_size: int, dp_rank: int,
                 dp_size: int, seed: int, shuffle: bool = True):
        self.global_batch = batch_size * dp_size
        if len(dataset) < self.global_batch:
            raise ValueError(f"{len(dataset)} samples are fewer than one global batch of "
                             f"{batch_size} x {dp_size} data-parallel ranks")
        self.dataset, self.batch_size = dataset, batch_size
        self.dp_rank, self.dp_size, self.seed, self.shuffle = dp_rank, dp_size, seed, shuffle
        self.epoch, self.batch_index = 0, 0
        self._order_epoch, self._order = None, []
        self._batches_per_epoch = len(dataset) // self.global_batch

    def batches_per_epoch(self) -> int:
        return self._batches_per_epoch

    def _epoch_indices(self, epoch: int) -> list[int]:
        """The epoch's sample order (all ranks), computed once per epoch."""
        if self._order_epoch == epoch:
            return self._order
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(n)
        self._order_epoch, self._order = epoch, order.tolist()
        return self._order

    def __iter__(self):
        return self

    def __next__(self):
        if self.batch_index >= self._batches_per_epoch:
            self.epoch, self.batch_index = self.epoch + 1, 0
        idx = self._epoch_indices(self.epoch)
        first = self.dp_rank * self.batch_size  # this rank's place in the global batch
        start = self.batch_index * self.global_batch + first
        items = [self.dataset[i] for i in idx[start:start + self.batch_size]]
        self.batch_index += 1
        return {"latents": torch.stack([x for x, _ in items]),
                "captions": [c for _, c in items],
                "index": torch.arange(first, first + self.batch_size)}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch_index": self.batch_index, "seed": self.seed,
                "samples": self.batch_index * self.global_batch,
                "global_batch": self.global_batch, "dp_size": self.dp_size}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        if "samples" in state:  # global samples of the epoch already consumed
            self.batch_index, rest = divmod(int(state["samples"]), self.global_batch)
            if rest:
                import logging
                logging.getLogger("moviegen.data").warning(
                    "resuming at sample %d of epoch %d, which global batches of %d do not "
                    "reach exactly: %d samples are skipped", state["samples"], self.epoch,
                    self.global_batch, self.global_batch - rest)
                self.batch_index += 1
        elif state["dp_size"] == self.dp_size:
            self.batch_index = int(state["batch_index"])
        else:  # an older checkpoint without a global position: restart the epoch
            self.batch_index = 0

    def stats(self) -> dict:
        return {"skipped_files": 0, "seen_files": 0}
