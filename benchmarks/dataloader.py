"""Data-loader throughput: DALI vs PyAV + torch DataLoader, and time to first batch.

    python benchmarks/dataloader.py                       # ~3-5 min on 2 CPU cores
    python benchmarks/dataloader.py --workers 1 2 4 --batches 12 --rows 1000000
    python benchmarks/dataloader.py --quick               # smoke run, seconds

What it does, all in one run on the same files:
  1. generates VP9 test clips at 256 px (16:9, 2 s at 16 fps) and 768 px (16:9, 1 s at
     16 fps) with moviegen.data.synthetic;
  2. for each resolution, backend (DALI, and the PyAV path, which decodes with PyAV in
     torch DataLoader worker processes) and worker count, runs the real loader
     (moviegen.data.build_video_loader: bucket -> sample frames at 16 fps -> resize + crop
     -> [-1, 1] -> [B, 3, T, H, W]) and reports clips/s, frames/s and DALI / PyAV;
  3. writes a 10^6-row manifest (rows cycle over the 256 px clips) and times a fresh
     loader from nothing to its first batch: manifest parse, bucketing, epoch plan,
     first decode.
Timing starts after the first batch and after the batches prefetched meanwhile, so it
measures steady-state decode throughput. Bucket sizes have area resolution**2 (16:9 at
"256px" is 192 x 336). Results: a table on stdout, --output (default runs/benchmarks/dataloader_cpu.json) and .md
beside it (machine, versions, command); --update-results writes the committed
benchmarks/results/dataloader_cpu.* instead. "workers" = DataLoader processes for PyAV, decoder threads for DALI.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from itertools import islice

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from moviegen.data import build_video_loader, load_manifest  # noqa: E402
from moviegen.data.config import VideoDataConfig  # noqa: E402
from moviegen.data.dali_decode import dali_available  # noqa: E402
from moviegen.data.manifest import write_rows  # noqa: E402
from moviegen.data.synthetic import COLORS, DIRECTIONS, draw_shape, video_caption, write_webm  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def make_clips(out_dir: str, n: int, short_side: int, seconds: float, fps: int = 16) -> str:
    """n VP9 16:9 clips of a shape crossing the frame; returns their manifest."""
    os.makedirs(out_dir, exist_ok=True)
    w = int(round(short_side * 16 / 9 / 16)) * 16
    h = short_side
    frames = int(seconds * fps)
    rows = []
    colors, dirs = list(COLORS), list(DIRECTIONS)
    for i in range(n):
        (x0, y0), (x1, y1) = DIRECTIONS[dirs[i % len(dirs)]]
        clip = np.stack([draw_shape(h, w, "circle", COLORS[colors[i % len(colors)]],
                                    (x0 + (x1 - x0) * k / (frames - 1),
                                     y0 + (y1 - y0) * k / (frames - 1)), 0.3 * h)
                         for k in range(frames)])
        name = f"clip{short_side}_{i:03d}.webm"
        write_webm(os.path.join(out_dir, name), clip, fps)
        rows.append({"path": name, "caption": video_caption(colors[i % len(colors)], "circle",
                                                            dirs[i % len(dirs)]),
                     "type": "video", "width": w, "height": h, "fps": fps, "frames": frames,
                     "duration": frames / fps})
    path = os.path.join(out_dir, f"manifest_{short_side}.jsonl")
    write_rows(path, rows)
    return path


def loader_config(manifest: str, resolution: int, seconds: float, backend: str,
                  workers: int, batch: int) -> VideoDataConfig:
    frames = int(seconds * 16)
    h, w = resolution, int(round(resolution * 16 / 9 / 16)) * 16
    tokens = (frames // 8) * (h // 16) * (w // 16)
    return VideoDataConfig(
        manifest=manifest, backend=backend, num_workers=workers, fps=16.0,
        resolution=resolution, size_multiple=16, durations=[seconds],
        temporal_compression=8, spatial_compression=8, tokens_per_batch=tokens * batch,
        max_batch_size=batch, min_side=16, min_duration_s=0.1, use_images=False,
        prefetch_batches=1).validate()


def throughput(cfg: VideoDataConfig, batches: int) -> dict:
    loader = build_video_loader(cfg, dp_rank=0, dp_size=1, seed=0)
    first = next(loader)                                  # warm-up: workers, pipelines
    # batches decoded ahead while the first one was awaited are not steady-state work:
    # drain them untimed (prefetch depth x workers for the DataLoader, the queue for DALI)
    ahead = cfg.prefetch_batches * (max(1, cfg.num_workers) if cfg.backend == "pyav" else 1)
    for _ in islice(loader, ahead):
        pass
    t0 = time.perf_counter()
    clips = frames = 0
    for b in islice(loader, batches):
        clips += b["video"].shape[0]
        frames += b["video"].shape[0] * b["video"].shape[2]
    dt = time.perf_counter() - t0
    loader.close()
    assert loader.stats()["skipped_files"] == 0
    return {"clips_per_s": clips / dt, "frames_per_s": frames / dt, "seconds": dt,
            "batches": batches, "batch_shape": list(first["video"].shape)}


def first_batch(manifest_256: str, rows: int, tmp: str, backend: str) -> dict:
    src = load_manifest(manifest_256)
    big = os.path.join(tmp, "million.jsonl")
    t0 = time.perf_counter()
    with open(big, "w") as f:
        base = [json.dumps({"path": os.path.join(src.root, p), "caption": c, "type": "video",
                            "width": int(w), "height": int(h), "fps": float(fps),
                            "frames": int(n), "duration": float(d)})
                for p, c, w, h, fps, n, d in zip(src.paths, src.captions, src.width,
                                                  src.height, src.fps, src.frames,
                                                  src.duration)]
        for i in range(0, rows, len(base)):
            f.write("\n".join(base[: rows - i]) + "\n")
    write_s = time.perf_counter() - t0
    size_mb = os.path.getsize(big) / 2 ** 20
    cfg = loader_config(big, 256, 2.0, backend, 2, 4)
    cfg.aspect_ratios = VideoDataConfig().aspect_ratios    # 5 x 5 buckets as in training
    cfg.durations = [0.5, 1.0, 1.25, 1.5, 2.0]
    t0 = time.perf_counter()
    m = load_manifest(big)
    t_parse = time.perf_counter() - t0
    loader = build_video_loader(cfg, dp_rank=0, dp_size=8, seed=0, manifest=m)
    t_build = time.perf_counter() - t0
    n_batches = loader.batches_per_epoch()
    t_plan = time.perf_counter() - t0
    batch = next(loader)
    t_first = time.perf_counter() - t0
    loader.close()
    os.remove(big)
    return {"rows": rows, "manifest_mb": round(size_mb, 1), "write_manifest_s": write_s,
            "parse_s": t_parse, "parse_plus_bucketing_s": t_build, "plus_epoch_plan_s": t_plan,
            "time_to_first_batch_s": t_first, "batches_per_epoch_per_rank": n_batches,
            "dp_size": 8, "backend": backend, "first_batch_shape": list(batch["video"].shape)}


def versions() -> dict:
    import av
    import torch
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "av": av.__version__, "numpy": np.__version__}
    try:
        import nvidia.dali as dali
        out["nvidia-dali"] = dali.__version__
    except Exception:
        out["nvidia-dali"] = None
    return out


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except Exception:
        pass
    return {"cpu": cpu, "cores_visible": os.cpu_count(), "platform": platform.platform()}


def to_markdown(res: dict) -> str:
    lines = [f"# Data loader benchmark (CPU)", "",
             f"Command: `{res['command']}`", "",
             f"Machine: {res['machine']['cpu']}, {res['machine']['cores_visible']} cores visible "
             f"(shared), {res['machine']['platform']}", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()), "",
             "| resolution | clip (T x H x W) | workers | DALI clips/s | DALI frames/s "
             "| PyAV clips/s | PyAV frames/s | DALI / PyAV (clips/s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["throughput"]:
        d, p = r.get("dali"), r["pyav"]
        shape = "x".join(str(s) for s in p["batch_shape"][2:])
        lines.append(
            f"| {r['resolution']}px | {shape} | {r['workers']} | "
            + (f"{d['clips_per_s']:.2f} | {d['frames_per_s']:.1f} | " if d else "- | - | ")
            + f"{p['clips_per_s']:.2f} | {p['frames_per_s']:.1f} | "
            + (f"{r['ratio_dali_over_pyav']:.2f}x |" if d else "- |"))
    fb = res["first_batch"]
    lines += ["", "Bucket area = resolution^2 (16:9 -> 192x336 at 256px, 576x1024 at 768px); "
              "source clips are 16:9 VP9 at 16 fps, 256 or 768 px tall. workers = DataLoader "
              "processes (PyAV) or DALI decoder threads.",
              "", f"Time to first batch, {fb['rows']:,}-row manifest ({fb['manifest_mb']} MB, "
              f"dp_size={fb['dp_size']}, backend={fb['backend']}): "
              f"**{fb['time_to_first_batch_s']:.2f} s** (parse {fb['parse_s']:.2f} s, "
              f"+ bucketing {fb['parse_plus_bucketing_s']:.2f} s, + epoch plan "
              f"{fb['plus_epoch_plan_s']:.2f} s, + first decode).", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--batches", type=int, default=6, help="timed batches per configuration")
    p.add_argument("--clips", type=int, default=8, help="test clips per resolution")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the big manifest")
    p.add_argument("--resolutions", type=int, nargs="+", default=[256, 768])
    p.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    p.add_argument("--output", default=os.path.join("runs", "benchmarks", "dataloader_cpu.json"),
                   help="JSON file (markdown beside it)")
    p.add_argument("--update-results", dest="update_results", action="store_true",
                   help="write the committed benchmarks/results/dataloader_cpu.* instead")
    a = p.parse_args(argv)
    if a.quick:
        a.workers, a.batches, a.clips, a.rows = [1], 2, 4, 20_000
    backends = ["dali", "pyav"] if dali_available() else ["pyav"]
    if "dali" not in backends:
        print("DALI not installed: PyAV only", file=sys.stderr)
    tmp = tempfile.mkdtemp(prefix="moviegen_bench_")
    try:
        seconds = {256: 2.0, 768: 1.0}
        manifests = {}
        for res in a.resolutions:
            t0 = time.perf_counter()
            manifests[res] = make_clips(tmp, a.clips, res, seconds.get(res, 1.0))
            print(f"generated {a.clips} clips at {res}px in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)
        rows = []
        batch = {256: 4, 768: 2}
        for res in a.resolutions:
            for nw in a.workers:
                entry = {"resolution": res, "workers": nw}
                for backend in ["pyav"] + [b for b in backends if b != "pyav"]:
                    cfg = loader_config(manifests[res], res, seconds.get(res, 1.0), backend, nw,
                                        batch.get(res, 2))
                    entry[backend] = throughput(cfg, a.batches)
                if "dali" in entry:
                    entry["ratio_dali_over_pyav"] = (entry["dali"]["clips_per_s"]
                                                     / entry["pyav"]["clips_per_s"])
                rows.append(entry)
                print(json.dumps(entry), file=sys.stderr)
        fb = first_batch(manifests[a.resolutions[0]], a.rows, tmp, backends[0])
        result = {"command": "python benchmarks/dataloader.py" + (" " + " ".join(
                      sys.argv[1:]) if sys.argv[1:] else ""),
                  "machine": machine(), "versions": versions(), "throughput": rows,
                  "first_batch": fb}
        md = to_markdown(result)
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
