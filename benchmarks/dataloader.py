"""Data-loader throughput on realistic files, CPU decoders side by side, time to first batch.

    python benchmarks/dataloader.py                  # ~10 min on 2 lightly shared cores
    python benchmarks/dataloader.py --quick          # smoke run, under a minute
    python benchmarks/dataloader.py --clips 4 --repeats 3 --batches 2 \
        --torchcodec_ffmpeg_from_pyav --update_results   # the committed results

What it does, all in one run on the same files:
  1. encodes H.264 (.mp4, libx264) and VP9 (.webm, libvpx-vp9) clips at 256 px (448x256)
     and 720p (1280x720), 24 fps, with PyAV (benchmarks/data_files.py);
  2. for each set and worker count runs the real loader (build_video_loader: bucket ->
     frames at 16 fps by presentation time -> resize + crop -> [-1, 1] -> [B,3,T,H,W])
     with the CPU decoder (PyAV in DataLoader worker processes) and, for VP9, DALI on CPU
     (one pipeline in the process, `workers` = its threads, capped at the usable cores;
     the uncapped count is measured too where it differs). DALI's CPU decoder has no
     H.264, so H.264 rows always go to the CPU decoder. Each configuration is run
     --repeats times, interleaved, and reported as median [min-max] clips/s;
  3. decodes the same frames with PyAV and torchcodec in one process
     (benchmarks/cpu_decoders.py; torchcodec only where it loads: --torchcodec_ffmpeg_from_pyav);
  4. writes a --rows manifest (paths cycle over the 256 px H.264 clips, captions are
     unique) and times a fresh loader to its first batch, parsing the JSONL and from its
     Parquet copy.
Timing: after the first batch and the batches prefetched meanwhile, a whole number of
worker rounds (the timed batch count is rounded up to a multiple of the workers): with
W workers the DataLoader hands out batches in waves of W, and a window that ends
mid-wave counts batches decoded before it started. Results: a table on stdout,
--output (default runs/benchmarks/dataloader_cpu.json) and .md beside it (machine, load
average, versions, command); --update_results writes benchmarks/results/dataloader_cpu.*.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from itertools import islice

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cpu_decoders  # noqa: E402
import data_files  # noqa: E402
import dataloader_report  # noqa: E402
from moviegen.data import build_video_loader, load_manifest  # noqa: E402
from moviegen.data import dali_decode  # noqa: E402
from moviegen.config.video import VideoDataConfig  # noqa: E402
from moviegen.data.decode import DALI_CPU_CODECS  # noqa: E402
from moviegen.data.manifest_cache import cache_path  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# source clip seconds, bucket resolution, clip seconds sampled, batch size
SETTINGS = {256: (2.5, 256, 2.0, 4), 720: (1.5, 512, 1.0, 2)}


def loader_config(manifest: str, size: int, backend: str, workers: int) -> VideoDataConfig:
    _, res, seconds, batch = SETTINGS[size]
    return VideoDataConfig(
        manifest=manifest, backend=backend, num_workers=workers, fps=16.0,
        resolution=res, size_multiple=16, durations=[seconds], temporal_compression=8,
        spatial_compression=8, tokens_per_batch=10**9, max_batch_size=batch,
        min_side=16, min_duration_s=0.1, use_images=False, prefetch_batches=1).validate()


def throughput(cfg: VideoDataConfig, batches: int, dali_threads=None,
               partial_round: bool = False) -> dict:
    saved = dali_decode.dali_threads
    if dali_threads is not None:  # the uncapped count, for the before/after comparison
        dali_decode.dali_threads = dali_threads
    try:
        loader = build_video_loader(cfg, dp_rank=0, dp_size=1, seed=0)
        first = next(loader)                                  # warm-up: workers, pipelines
    finally:
        dali_decode.dali_threads = saved
    pyav = loader.backend == "pyav"
    nw = max(1, cfg.num_workers)
    for _ in islice(loader, cfg.prefetch_batches * (nw if pyav else 1)):
        pass                                  # decoded while the first batch was awaited
    k = math.ceil(batches / nw) * nw if pyav else batches     # whole waves of W batches
    if partial_round:  # how this benchmark timed before: the window ends mid-wave
        k += nw // 2
    t0 = time.perf_counter()
    clips = frames = 0
    for b in islice(loader, k):
        clips += b["video"].shape[0]
        frames += b["video"].shape[0] * b["video"].shape[2]
    dt = time.perf_counter() - t0
    threads = loader._dali.num_threads if loader._dali is not None else None
    loader.close()
    assert loader.stats()["skipped_files"] == 0, loader.skipped()
    return {"clips_per_s": clips / dt, "frames_per_s": frames / dt, "batches": k,
            "seconds": dt, "backend": loader.backend, "dali_threads": threads,
            "batch_shape": list(first["video"].shape)}


def _summary(runs: list[dict]) -> dict:
    v = [r["clips_per_s"] for r in runs]
    f = [r["frames_per_s"] for r in runs]
    return {"clips_per_s": statistics.median(v), "min": min(v), "max": max(v),
            "frames_per_s": statistics.median(f), "repeats": len(v),
            "batch_shape": runs[0]["batch_shape"], "dali_threads": runs[0]["dali_threads"],
            "batches": runs[0]["batches"],
            "runs": [round(x, 3) for x in v]}


def loader_rows(manifests: dict, workers: list[int], batches: int, repeats: int,
                with_dali: bool) -> list[dict]:
    cores = dali_decode.usable_cores()
    sizes = [size for _, size in manifests]
    rows = []
    for (codec, size), manifest in manifests.items():
        for nw in workers:
            plans = {"cpu": dict(backend="pyav")}
            if with_dali and codec in DALI_CPU_CODECS:
                plans["dali"] = dict(backend="dali")
                if nw > cores:
                    plans["dali_uncapped"] = dict(backend="dali",
                                                  dali_threads=lambda n: max(1, int(n)))
                if nw == max(workers) and nw > 1 and size == min(sizes):
                    plans["cpu_partial_round"] = dict(backend="pyav", partial_round=True)
            runs: dict[str, list] = {name: [] for name in plans}
            for _ in range(repeats):   # interleaved: load drifting on a shared machine
                for name, plan in plans.items():  # hits every decoder alike
                    cfg = loader_config(manifest, size, plan["backend"], nw)
                    runs[name].append(throughput(cfg, batches, plan.get("dali_threads"),
                                                 plan.get("partial_round", False)))
            entry = {"codec": codec, "size": size, "workers": nw,
                     **{name: _summary(r) for name, r in runs.items()}}
            if "dali" in entry:
                entry["dali_over_cpu"] = entry["dali"]["clips_per_s"] / entry["cpu"]["clips_per_s"]
            if "dali_uncapped" in entry:
                entry["uncapped_over_cpu"] = (entry["dali_uncapped"]["clips_per_s"]
                                              / entry["cpu"]["clips_per_s"])
            rows.append(entry)
            print(json.dumps(entry), file=sys.stderr)
    return rows


def first_batch(manifest: str, rows: int, tmp: str) -> dict:
    src = load_manifest(manifest)
    big = os.path.join(tmp, "million.jsonl")
    base = [json.dumps({"path": os.path.join(src.root, p), "caption": c, "type": "video",
                        "width": int(w), "height": int(h), "fps": float(fps),
                        "frames": int(n), "duration": float(d), "codec": codec})
            for p, c, w, h, fps, n, d, codec in zip(src.paths, src.captions, src.width,
                                                     src.height, src.fps, src.frames,
                                                     src.duration, src.codecs)]
    with open(big, "w") as f:
        # paths cycle over the clips (they must exist); captions are unique, as in a real
        # set, so the Parquet copy cannot shrink them to a few dictionary entries
        for i in range(0, rows, len(base)):
            f.write("\n".join(ln.replace('", "type"', f' (take {i + k})", "type"', 1)
                              for k, ln in enumerate(base[: rows - i])) + "\n")
    out = {"rows": rows, "manifest_mb": round(os.path.getsize(big) / 2 ** 20, 1),
           "dp_size": 8, "backend": "pyav"}
    cfg = loader_config(big, 256, "pyav", 2)
    cfg.aspect_ratios = VideoDataConfig().aspect_ratios    # 5 x 5 buckets as in training
    cfg.durations = [0.5, 1.0, 1.25, 1.5, 2.0]
    t0 = time.perf_counter()
    load_manifest(big, cache=True)          # parses the JSONL and writes the Parquet copy
    out["parse_and_write_cache_s"] = time.perf_counter() - t0
    out["cache_mb"] = round(os.path.getsize(cache_path(big)) / 2 ** 20, 1)
    for mode in ("jsonl", "parquet"):
        t0 = time.perf_counter()
        m = load_manifest(big, cache=mode == "parquet")
        t_load = time.perf_counter() - t0
        loader = build_video_loader(cfg, dp_rank=0, dp_size=8, seed=0, manifest=m)
        t_build = time.perf_counter() - t0
        n_batches = loader.batches_per_epoch()
        t_plan = time.perf_counter() - t0
        batch = next(loader)
        t_first = time.perf_counter() - t0
        loader.close()
        out[mode] = {"load_manifest_s": t_load, "plus_bucketing_s": t_build,
                     "plus_epoch_plan_s": t_plan, "time_to_first_batch_s": t_first,
                     "batches_per_epoch_per_rank": n_batches,
                     "first_batch_shape": list(batch["video"].shape)}
        del m, loader
    out["speedup"] = (out["jsonl"]["time_to_first_batch_s"]
                      / out["parquet"]["time_to_first_batch_s"])
    os.remove(big)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--codecs", nargs="+", default=["h264", "vp9"], choices=sorted(data_files.ENCODERS))
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 720], choices=sorted(SETTINGS))
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--batches", type=int, default=4,
                   help="timed batches per run (rounded up to whole worker rounds)")
    p.add_argument("--repeats", type=int, default=2, help="runs per configuration")
    p.add_argument("--clips", type=int, default=4,
                   help="clips per (codec, size) set (a 256 px batch holds 4)")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the big manifest")
    p.add_argument("--torchcodec_ffmpeg_from_pyav", dest="tc_pyav_ffmpeg", action="store_true",
                   help="let torchcodec load PyAV's bundled FFmpeg (see cpu_decoders.py)")
    p.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    p.add_argument("--output", default=os.path.join("runs", "benchmarks", "dataloader_cpu.json"),
                   help="JSON file (markdown beside it)")
    p.add_argument("--update_results", dest="update_results", action="store_true",
                   help="write the committed benchmarks/results/dataloader_cpu.* instead")
    a = p.parse_args(argv)
    if a.quick:
        a.workers, a.batches, a.clips, a.rows, a.repeats = [1], 1, 1, 20_000, 1
        a.sizes = [256]
    with_dali = dali_decode.dali_available()
    if not with_dali:
        print("DALI not installed: CPU decoder only", file=sys.stderr)
    load_before = os.getloadavg()
    started = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="moviegen_bench_")
    try:
        manifests, files = {}, []
        for codec in a.codecs:
            for size in a.sizes:
                t0 = time.perf_counter()
                m = data_files.make_set(tmp, codec, size, a.clips, SETTINGS[size][0])
                manifests[(codec, size)] = m
                mf = load_manifest(m)
                files += [{"path": mf.resolve(i), "codec": codec, "size": size,
                           "times": (np.arange(int(SETTINGS[size][2] * 16)) / 16).tolist()}
                          for i in range(len(mf))]
                print(f"encoded {a.clips} {codec} clips at {size}px in "
                      f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        rows = loader_rows(manifests, a.workers, a.batches, a.repeats, with_dali)
        decoders = cpu_decoders.run(files, max(1, a.repeats), a.tc_pyav_ffmpeg)
        first = manifests.get(("h264", 256)) or next(iter(manifests.values()))
        fb = first_batch(first, a.rows, tmp)
        result = {"command": "python benchmarks/dataloader.py" + (" " + " ".join(
                      sys.argv[1:]) if sys.argv[1:] else ""),
                  "machine": dataloader_report.machine(load_before),
                  "versions": dataloader_report.versions(), "wall_s": time.perf_counter() - started,
                  "throughput": rows, "cpu_decoders": decoders, "first_batch": fb}
        md = dataloader_report.to_markdown(result)
        print(md)
        if a.update_results:
            a.output = os.path.join(RESULTS, "dataloader_cpu.json")
        os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
        with open(a.output, "w") as f:
            json.dump(result, f, indent=1)
        with open(os.path.splitext(a.output)[0] + ".md", "w") as f:
            f.write(md)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
