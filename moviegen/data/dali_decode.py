"""The DALI decode path: one pipeline for video, one for images, fed per batch.

Graph (video):  encoded bytes --decoders.video(frames=...)--> [T, H, W, 3] uint8
                --resize(linear, antialias)--> covers the bucket --crop_mirror_normalize
                (crop corner, (x - 127.5) / 127.5, layout CFHW)--> float32 [3, T, h, w]
Images use decoders.image and layout CHW. Every per-sample quantity (frame indices,
resize size, crop corner and size) is a pipeline input, so the same two pipelines serve
all buckets. On CUDA the decoders run 'mixed' (NVDEC: H.264/HEVC/AV1/VP9/...); on CPU,
DALI decodes VP8/VP9/MJPEG only: rows whose manifest codec is something else (H.264,
HEVC, MPEG-2, ...) are decoded by the CPU decoder (PyAV) in the same batch, and a file
DALI fails on is retried there before it is skipped.

A DALI pipeline is unusable after an operator error, so a failed batch is re-run one
sample at a time on fresh pipelines to find the bad files; those are reported with
DALI's reason and the rest of the batch is kept. Rebuilding costs ~1 ms.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from moviegen.data.decode import (DALI_CPU_CODECS, DALI_GPU_CODECS, BatchSpec, DecodeError,
                                  SampleSpec, check_file, decode_sample_pyav)

_SCALARS = ("resize_x", "resize_y", "crop_x", "crop_y", "crop_h", "crop_w")


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except Exception:
        return False
    return True


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask: a SLURM/cgroup allocation)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def dali_threads(num_workers: int) -> int:
    """DALI CPU threads for `num_workers`: never more than the usable cores. DALI runs
    one pipeline in this process, so its threads are the only decode parallelism; more
    threads than cores only adds switching, and a batch of B samples keeps at most B of
    them busy in the decoder (benchmarks/dataloader.py measures both)."""
    return max(1, min(int(num_workers), usable_cores()))


def _dali_reason(err: Exception) -> str:
    """The informative part of a DALI pipeline error (first line after 'encountered:')."""
    text = str(err)
    if "encountered:" in text:
        tail = [ln.strip() for ln in text.split("encountered:", 1)[1].splitlines() if ln.strip()]
        text = tail[0] if tail else text
    text = " ".join(text.split()).replace(" Current pipeline object is no longer valid.", "")
    return ("DALI: " + text)[:300]


class DaliDecoder:
    """Decodes BatchSpecs with DALI; `device_id=None` decodes on CPU."""

    def __init__(self, max_batch_size: int, num_threads: int, device_id: int | None = None):
        self.max_batch_size = max(1, int(max_batch_size))
        self.num_threads = max(1, int(num_threads))
        self.device_id = device_id
        self._pipes: dict[str, object] = {}
        self._known_bad: dict[str, str] = {}  # path -> reason; not retried (saves rebuilds)

    # -- pipelines ---------------------------------------------------------------------

    def _build(self, kind: str):
        from nvidia.dali import fn, pipeline_def, types

        dev = "cpu" if self.device_id is None else "mixed"

        @pipeline_def(batch_size=self.max_batch_size, num_threads=self.num_threads,
                      device_id=self.device_id, exec_pipelined=False, exec_async=False,
                      prefetch_queue_depth=1)
        def graph():
            enc = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            args = {n: fn.external_source(name=n, dtype=types.FLOAT, ndim=0) for n in _SCALARS}
            if kind == "video":
                frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
                x = fn.decoders.video(enc, device=dev, frames=frames, pad_mode="none")
                layout = "CFHW"
            else:
                x = fn.decoders.image(enc, device=dev, output_type=types.RGB)
                layout = "CHW"
            x = fn.resize(x, resize_x=args["resize_x"], resize_y=args["resize_y"],
                          interp_type=types.INTERP_LINEAR, antialias=True)
            return fn.crop_mirror_normalize(
                x, crop_h=args["crop_h"], crop_w=args["crop_w"], crop_pos_x=args["crop_x"],
                crop_pos_y=args["crop_y"], mean=127.5, std=127.5, dtype=types.FLOAT,
                output_layout=layout)

        pipe = graph()
        pipe.build()
        return pipe

    def close(self) -> None:
        """Drops the pipelines (they are rebuilt on the next decode)."""
        self._pipes.clear()

    def _pipe(self, kind: str):
        if kind not in self._pipes:
            self._pipes[kind] = self._build(kind)
        return self._pipes[kind]

    # -- running -----------------------------------------------------------------------

    @staticmethod
    def _inputs(samples: list[SampleSpec], encoded: list[np.ndarray], out_hw) -> dict:
        h, w = out_hw
        f32 = lambda v: np.array(v, np.float32)  # noqa: E731
        cols = {n: [] for n in _SCALARS}
        for s in samples:
            (rh, rw), (cy, cx) = s.resize_hw, s.crop_yx
            cols["resize_y"].append(f32(rh))
            cols["resize_x"].append(f32(rw))
            # DALI places the crop at pos * (size - crop): +0.25 px lands on the integer
            # corner whether DALI rounds or truncates.
            cols["crop_y"].append(f32(min(1.0, (cy + 0.25) / (rh - h)) if rh > h else 0.0))
            cols["crop_x"].append(f32(min(1.0, (cx + 0.25) / (rw - w)) if rw > w else 0.0))
            cols["crop_h"].append(f32(h))
            cols["crop_w"].append(f32(w))
        cols["encoded"] = encoded
        if samples and samples[0].kind == "video":
            cols["frames"] = [s.frame_indices.astype(np.int32) for s in samples]
        return cols

    def _run(self, kind: str, inputs: dict) -> torch.Tensor:
        pipe = self._pipe(kind)
        try:
            for name, data in inputs.items():
                pipe.feed_input(name, data)
            (out,) = pipe.run()
        except Exception:
            self._pipes.pop(kind, None)  # the pipeline is invalid after an error
            raise
        return self._to_torch(out)

    def _to_torch(self, out) -> torch.Tensor:
        if self.device_id is None:
            return torch.from_numpy(np.array(out.as_tensor()))
        from nvidia.dali.plugin.pytorch import feed_ndarray
        dense = out.as_tensor()
        t = torch.empty(dense.shape(), dtype=torch.float32, device=f"cuda:{self.device_id}")
        feed_ndarray(dense, t, cuda_stream=torch.cuda.current_stream(self.device_id))
        return t

    def _dali_reads(self, s: SampleSpec) -> bool:
        """Whether DALI on this device reads the sample's codec ("" unknown: try it)."""
        if s.kind == "video" and s.frame_times is not None:
            return False  # DALI picks frames by index; a VFR clip needs timestamps
        if s.kind != "video" or not s.codec:
            return True
        return s.codec in (DALI_CPU_CODECS if self.device_id is None else DALI_GPU_CODECS)

    def _cpu_decode(self, s: SampleSpec, hw, dali_reason: str | None = None) -> torch.Tensor:
        """The CPU decoder for what DALI does not read here; its failure is the reason."""
        try:
            t = decode_sample_pyav(s, hw)
        except DecodeError as e:
            raise DecodeError(f"{e}" + (f" (and {dali_reason})" if dali_reason else "")) from None
        return t if self.device_id is None else t.to(f"cuda:{self.device_id}")

    def decode_batch(self, spec: BatchSpec) -> dict:
        """Same contract as decode.decode_batch_pyav. Samples whose codec DALI does not
        decode on this device (CPU: only VP8/VP9/MJPEG) go to the CPU decoder (PyAV); a
        sample DALI fails on is retried there, and a skip reports the CPU decoder's
        reason."""
        b = spec.bucket
        hw = (b.height, b.width)
        skipped, good, encoded = [], [], []
        parts: dict[int, torch.Tensor] = {}
        for i, s in enumerate(spec.samples):
            try:
                if s.path in self._known_bad:
                    raise DecodeError(self._known_bad[s.path])
                check_file(s.path)
                if not self._dali_reads(s):
                    parts[i] = self._cpu_decode(s, hw)
                    continue
                encoded.append(np.fromfile(s.path, dtype=np.uint8))
                good.append(i)
            except (DecodeError, OSError) as e:
                skipped.append((i, str(e)))
        if good:
            samples = [spec.samples[i] for i in good]
            try:
                video = self._run(b.kind, self._inputs(samples, encoded, hw))
                parts.update(zip(good, video))
            except Exception:
                for i, s, enc in zip(good, samples, encoded):
                    try:
                        parts[i] = self._run(b.kind, self._inputs([s], [enc], hw))[0]
                    except Exception as e:  # noqa: BLE001 - DALI failed on this file
                        try:
                            parts[i] = self._cpu_decode(s, hw, _dali_reason(e))
                        except DecodeError as err:
                            self._known_bad[s.path] = str(err)
                            skipped.append((i, self._known_bad[s.path]))
        kept = sorted(parts)
        if kept:
            video = torch.stack([parts[i] for i in kept])
            if b.kind == "image" and video.dim() == 4:
                video = video.unsqueeze(2)  # [B, 3, H, W] -> [B, 3, 1, H, W]
        else:
            video = torch.zeros((0, 3, b.frames, *hw), dtype=torch.float32)
        skipped.sort()
        return {"epoch": spec.epoch, "index": spec.index, "video": video, "kept": kept,
                "skipped": skipped}
