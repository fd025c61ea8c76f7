"""The training/validation loader: bucketed, DP-sharded, deterministic, resumable.

    loader = build_video_loader(cfg, dp_rank=r, dp_size=n, seed=0, split="train")
    for batch in loader:            # never ends; epochs advance inside
        batch["video"]              # float32 [B, 3, T, H, W] in [-1, 1] (images: T = 1)
        batch["captions"]           # ["FPS-8 a red circle moves ...", ...]
        batch["bucket"], batch["paths"]
    state = loader.state_dict()     # exact resume: load_state_dict(state) on a new loader

TP/CP peers pass the same dp_rank and get identical batches. Each DP rank keeps its own
state (a rank whose whole batch was unreadable moves on to its next batch). Files that
fail to decode are logged with path and reason, counted in stats(), and skipped; a
RuntimeError is raised only when the skipped fraction passes cfg.max_skip_fraction.
"""
from __future__ import annotations

import atexit
import base64
import gc
import logging
import queue
import threading
import weakref
import zlib
from typing import Iterator

import numpy as np
import torch

from moviegen.data.buckets import Bucket, assign_buckets, make_buckets
from moviegen.config.video import SPLITS, VideoDataConfig
from moviegen.data.decode import BatchSpec, decode_batch_pyav, sample_spec, set_clip_cache
from moviegen.data.manifest import Manifest, load_manifest
from moviegen.data.epoch_plan import EpochPlan, build_epoch_plan
from moviegen.models.tokenizer import fps_prefix

logger = logging.getLogger(__name__)
_STATE_VERSION = 1


def pick_decoder(requested: str) -> str:
    from moviegen.data.dali_decode import dali_available

    if requested == "pyav":
        return "pyav"
    if dali_available():
        return "dali"
    if requested == "dali":
        raise RuntimeError("data.video.backend='dali' but nvidia-dali is not installed "
                           "(pip install nvidia-dali-cuda120, or use backend='pyav')")
    logger.warning("moviegen.data: DALI is not installed; decoding with PyAV + DataLoader")
    return "pyav"


def _ignore_preemption_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM/SIGUSR1: SLURM and Kubernetes signal the whole
    process group, and the main process owns preemption (it finishes the step, saves,
    then shuts the workers down). A worker killed by the signal would fail that save."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


class _Identity:
    def __call__(self, x):
        return x


class _SpecDataset(torch.utils.data.Dataset):
    """DataLoader 'indices' are BatchSpecs; a worker decodes a whole batch."""

    def __init__(self, codecs=None, cache_mb: int = 0):
        self.codecs, self.cache_mb = codecs, cache_mb

    def __getitem__(self, spec: BatchSpec) -> dict:
        set_clip_cache(self.cache_mb)  # in the process that decodes (a worker, or this one)
        return decode_batch_pyav(spec, self.codecs)


class _ThreadProducer:
    """Runs `decode` over `specs` on a background thread, `depth` batches ahead."""

    _DONE = object()

    def __init__(self, specs: Iterator[BatchSpec], decode, depth: int):
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(specs, decode), daemon=True,
                                        name="moviegen-dali-producer")
        self._thread.start()

    def _work(self, specs, decode):
        try:
            for spec in specs:
                item = decode(spec)
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as e:  # surfaced on the consumer's next()
            self._q.put(e)

    def __next__(self):
        item = self._q.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self):
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)


class _Planner:
    """Epoch plans and batch specs of one (split, dp_rank); shared with decode threads,
    so it must not refer back to the loader (which could then never be freed)."""

    def __init__(self, cfg, manifest, buckets, bucket_ids, *, seed, split, dp_rank, dp_size):
        self.cfg, self.manifest, self.buckets, self.bucket_ids = cfg, manifest, buckets, bucket_ids
        self.seed, self.split, self.dp_rank, self.dp_size = seed, split, dp_rank, dp_size
        # two epochs cached: near an epoch end the prefetcher is already in the next one
        self._plans: dict[int, EpochPlan] = {}
        self._lock = threading.Lock()

    def plan(self, epoch: int) -> EpochPlan:
        with self._lock:
            if epoch not in self._plans:
                plan = build_epoch_plan(
                    self.bucket_ids, self.buckets, seed=self.seed, epoch=epoch,
                    split=self.split, dp_size=self.dp_size, shuffle=self.cfg.shuffle,
                    drop_last=self.cfg.drop_last, image_ratio=self.cfg.image_ratio)
                if len(plan) == 0:
                    raise RuntimeError(f"epoch plan is empty (drop_last={self.cfg.drop_last} "
                                       "with buckets smaller than one global batch?)")
                for old in sorted(self._plans)[:-1]:
                    del self._plans[old]
                self._plans[epoch] = plan
            return self._plans[epoch]

    def spec(self, epoch: int, k: int) -> BatchSpec:
        plan = self.plan(epoch)
        sl = plan.rank_slice(k, self.dp_rank, self.dp_size)
        bucket = self.buckets[int(plan.batch_bucket[k])]
        centre = self.split != "train"
        samples = [sample_spec(self.manifest, int(r), bucket, self.cfg.fps, u, centre)
                   for r, u in zip(plan.rows[sl], plan.uniforms[sl])]
        return BatchSpec(epoch=epoch, index=k, bucket=bucket, samples=samples)

    def specs(self, epoch: int, k: int) -> Iterator[BatchSpec]:
        """Every spec from (epoch, k) on, forever."""
        while True:
            n = len(self.plan(epoch))
            while k < n:
                yield self.spec(epoch, k)
                k += 1
            epoch, k = epoch + 1, 0


_LIVE_SOURCES: "weakref.WeakSet" = weakref.WeakSet()
_ATEXIT_REGISTERED = False


def _close_live_sources():
    """Stops decode threads before DALI's own atexit check that no pipeline is alive."""
    for src in list(_LIVE_SOURCES):
        src.close()
    gc.collect()


def _track(source):
    global _ATEXIT_REGISTERED
    if not _ATEXIT_REGISTERED:  # registered after DALI's import, so it runs before DALI's
        atexit.register(_close_live_sources)
        _ATEXIT_REGISTERED = True
    _LIVE_SOURCES.add(source)
    return source


class VideoLoader:
    """Iterable forever over batches of one bucket each; see the module docstring."""

    def __init__(self, cfg: VideoDataConfig, manifest: Manifest, *, dp_rank: int, dp_size: int,
                 seed: int, split: str, device: str, backend: str, codecs=None):
        self.cfg, self.manifest = cfg, manifest
        self.dp_rank, self.dp_size, self.seed, self.split = dp_rank, dp_size, seed, split
        self.device = torch.device(device)
        self.backend = backend
        self.codecs = codecs
        self.buckets: list[Bucket] = make_buckets(cfg)
        ids = assign_buckets(cfg, manifest, self.buckets)
        in_split = manifest.is_val if split == "val" else ~manifest.is_val
        if cfg.val_manifest and split == "val":
            in_split = np.ones(len(manifest), bool)
        self.bucket_ids = np.where(in_split, ids, -1)
        n_rows = int(in_split.sum())
        n_used = int((self.bucket_ids >= 0).sum())
        if n_used == 0:
            raise RuntimeError(
                f"no {split} samples left in {manifest.source} after filtering "
                f"({n_rows} {split} rows; min_side={cfg.min_side}, duration "
                f"{cfg.min_duration_s}-{cfg.max_duration_s} s, shortest bucket "
                f"{min(cfg.durations)} s at {cfg.fps} fps)")
        logger.info("moviegen.data: %s split: %d of %d rows in %d buckets, backend=%s, "
                    "dp %d/%d", split, n_used, n_rows,
                    len(np.unique(self.bucket_ids[self.bucket_ids >= 0])), backend,
                    dp_rank, dp_size)
        self._planner = _Planner(cfg, manifest, self.buckets, self.bucket_ids, seed=seed,
                                 split=split, dp_rank=dp_rank, dp_size=dp_size)
        # position of the next batch to *yield*
        self.epoch, self.batch_index = 0, 0
        self._seen = np.zeros(len(manifest), bool)
        self._bad: dict[int, str] = {}          # row -> reason
        self._skipped_samples = 0
        self._seen_samples = 0
        self._batches = 0
        self._source = None
        self._dali = None

    # -- plan --------------------------------------------------------------------------

    def plan(self, epoch: int) -> EpochPlan:
        return self._planner.plan(epoch)

    def batches_per_epoch(self) -> int:
        return len(self.plan(self.epoch))

    # -- decoding sources --------------------------------------------------------------

    def _start(self):
        specs = self._planner.specs(self.epoch, self.batch_index)
        if self.backend == "dali":
            if self._dali is None:
                from moviegen.data.dali_decode import DaliDecoder, dali_threads
                dev = (self.device.index or 0) if self.device.type == "cuda" else None
                self._dali = DaliDecoder(max(b.batch_size for b in self.buckets),
                                         dali_threads(self.cfg.num_workers), dev)
            self._source = _track(_ThreadProducer(specs, self._dali.decode_batch,
                                                  self.cfg.prefetch_batches))
        else:
            nw = self.cfg.num_workers
            dl = torch.utils.data.DataLoader(
                _SpecDataset(self.codecs, self.cfg.cache_decoded_mb), batch_size=None, sampler=_IterableSpecs(specs),
                num_workers=nw, collate_fn=_Identity(),
                worker_init_fn=_ignore_preemption_signals if nw > 0 else None,
                # its own generator: starting an iterator (again after a resume) must not
                # draw from the global RNG the training step uses
                generator=torch.Generator().manual_seed(self.seed),
                prefetch_factor=self.cfg.prefetch_batches if nw > 0 else None,
                pin_memory=self.device.type == "cuda")
            self._source = iter(dl)

    def close(self):
        src, self._source = self._source, None
        if isinstance(src, _ThreadProducer):
            src.close()
        elif src is not None and hasattr(src, "_shutdown_workers"):
            src._shutdown_workers()
        if self._dali is not None:
            self._dali.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- iteration ---------------------------------------------------------------------

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        while True:
            if self._source is None:
                self._start()
            item = next(self._source)
            assert (item["epoch"], item["index"]) == (self.epoch, self.batch_index), \
                "loader out of step with its plan"
            spec = self._planner.spec(item["epoch"], item["index"])
            batch = self._account(spec, item)
            self._advance()
            if batch is not None:
                return batch

    def _advance(self):
        self.batch_index += 1
        if self.batch_index >= len(self.plan(self.epoch)):
            self.epoch, self.batch_index = self.epoch + 1, 0
            self._check_skips(epoch_end=True)

    def _account(self, spec: BatchSpec, item: dict) -> dict | None:
        rows = np.asarray([s.row for s in spec.samples], np.int64)
        self._seen[rows] = True
        self._seen_samples += len(rows)
        for i, reason in item["skipped"]:
            row = int(rows[i])
            self._skipped_samples += 1
            if row not in self._bad:
                self._bad[row] = reason
                logger.warning("moviegen.data: skipping %s: %s", spec.samples[i].path, reason)
        self._batches += 1
        self._check_skips(epoch_end=False)
        kept = item["kept"]
        if not kept:
            return None
        samples = [spec.samples[i] for i in kept]
        captions = [fps_prefix(self.manifest.captions[s.row],
                               s.fps_used if s.kind == "video" else None) for s in samples]
        video = item["video"]
        if video.device != self.device:
            video = video.to(self.device, non_blocking=True)
        # each sample's place in the global batch (keys its noise, t and caption dropout)
        plan = self.plan(spec.epoch)
        first = plan.rank_slice(spec.index, self.dp_rank, self.dp_size).start - int(
            plan.batch_offsets[spec.index])
        return {"video": video, "captions": captions,
                "bucket": spec.bucket.name, "paths": [s.path for s in samples],
                "fps": [s.fps_used for s in samples],
                "index": torch.as_tensor([first + i for i in kept], dtype=torch.int64)}

    def _check_skips(self, epoch_end: bool):
        seen = int(self._seen.sum())
        bad = len(self._bad)
        if bad == 0 or seen == 0:
            return
        if not epoch_end and seen < self.cfg.skip_check_min_files:
            return
        if bad / seen > self.cfg.max_skip_fraction:
            examples = "; ".join(f"{self.manifest.resolve(r)}: {why}"
                                 for r, why in list(self._bad.items())[:5])
            raise RuntimeError(
                f"moviegen.data: {bad} of {seen} files seen could not be decoded "
                f"({bad / seen:.1%} > data.video.max_skip_fraction="
                f"{self.cfg.max_skip_fraction:.1%}); e.g. {examples}")

    # -- state -------------------------------------------------------------------------

    def state_dict(self) -> dict:
        packed = zlib.compress(np.packbits(self._seen).tobytes())
        return {"version": _STATE_VERSION, "epoch": self.epoch, "batch_index": self.batch_index,
                "seed": self.seed, "split": self.split, "dp_rank": self.dp_rank,
                "dp_size": self.dp_size, "num_rows": len(self.manifest),
                "bad_rows": {str(r): why for r, why in self._bad.items()},
                "skipped_samples": self._skipped_samples, "seen_samples": self._seen_samples,
                "batches": self._batches,
                "seen_rows_b64": base64.b64encode(packed).decode("ascii")}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "split", "dp_rank", "dp_size", "num_rows"):
            mine = len(self.manifest) if key == "num_rows" else getattr(self, key)
            if state[key] != mine:
                raise ValueError(f"loader state was saved with {key}={state[key]!r}, "
                                 f"this loader has {key}={mine!r}")
        self.close()
        self.epoch, self.batch_index = int(state["epoch"]), int(state["batch_index"])
        self._bad = {int(r): why for r, why in state["bad_rows"].items()}
        self._skipped_samples = int(state["skipped_samples"])
        self._seen_samples = int(state["seen_samples"])
        self._batches = int(state["batches"])
        bits = np.frombuffer(zlib.decompress(base64.b64decode(state["seen_rows_b64"])), np.uint8)
        self._seen = np.unpackbits(bits)[: len(self.manifest)].astype(bool)

    def stats(self) -> dict:
        seen = int(self._seen.sum())
        return {"seen_files": seen, "skipped_files": len(self._bad),
                "skipped_fraction": len(self._bad) / seen if seen else 0.0,
                "seen_samples": self._seen_samples, "skipped_samples": self._skipped_samples,
                "batches": self._batches, "epoch": self.epoch, "batch_index": self.batch_index,
                "backend": self.backend}

    def skipped(self) -> dict[str, str]:
        """{path: reason} of every file skipped so far."""
        return {self.manifest.resolve(r): why for r, why in self._bad.items()}


class _IterableSpecs(torch.utils.data.Sampler):
    def __init__(self, specs):
        self.specs = specs

    def __iter__(self):
        return self.specs


def build_video_loader(cfg: VideoDataConfig, *, dp_rank: int, dp_size: int, seed: int,
                       split: str = "train", device: str = "cpu",
                       manifest: Manifest | None = None, codecs=None) -> VideoLoader:
    """The loader of `split` for data-parallel rank `dp_rank` of `dp_size`.

    `manifest` may pass an already loaded Manifest (benchmarks, tests); `codecs` limits
    the PyAV path to those video codecs (e.g. ["vp8", "vp9", "mjpeg"] to behave like
    DALI's CPU decoder).
    """
    cfg.validate()
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not (0 <= dp_rank < dp_size):
        raise ValueError(f"need 0 <= dp_rank < dp_size, got dp_rank={dp_rank}, dp_size={dp_size}")
    if manifest is None:
        path = cfg.val_manifest if (split == "val" and cfg.val_manifest) else cfg.manifest
        if not path:
            raise ValueError("data.video.manifest is empty: point it at a manifest.jsonl "
                             "(python -m moviegen.data.synthetic --output_dir DIR ...)")
        manifest = load_manifest(path)
    backend = pick_decoder(cfg.backend)
    if cfg.backend == "auto" and cfg.cache_decoded_mb > 0:
        backend = "pyav"  # the decoded-clip cache is PyAV's: each file decoded once
    if cfg.backend == "auto" and backend == "dali" and torch.device(device).type == "cpu":
        # DALI's CPU decoder reads VP8/VP9/MJPEG only; rows of other codecs would all go
        # through its single-threaded CPU fallback: let PyAV's workers decode such a set
        from moviegen.data.decode import DALI_CPU_CODECS

        known = [c for c, img in zip(manifest.codecs, manifest.is_image) if c and not img]
        if known and sum(c in DALI_CPU_CODECS for c in known) < len(known) / 2:
            backend = "pyav"
            logger.info("moviegen.data: most videos are not VP8/VP9/MJPEG (DALI's CPU "
                        "codecs): decoding with PyAV")
    logger.info("moviegen.data: decoding with %s", backend)
    return VideoLoader(cfg, manifest, dp_rank=dp_rank, dp_size=dp_size, seed=seed, split=split,
                       device=device, backend=backend, codecs=codecs)
