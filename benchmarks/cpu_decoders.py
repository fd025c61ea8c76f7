"""PyAV vs torchcodec as the CPU decoder: the same frames, picked by presentation time,
from the same files, in one process with one FFmpeg thread each (the loader's workers
parallelise over files, not inside one).

    python benchmarks/cpu_decoders.py FILES.json      # what benchmarks/dataloader.py runs

FILES.json: [{"path": ..., "codec": ..., "size": ..., "times": [seconds, ...]}, ...].
Prints one JSON object: per (codec, size) the median seconds per clip of each decoder,
and torchcodec's status (version, or the exact reason it cannot decode here).

torchcodec needs FFmpeg's shared libraries under their usual names (libavcodec.so.62,
...). pip brings none: PyAV's wheel bundles FFmpeg, renamed (libavcodec-<hash>.so.62)
so no other program finds it. `--ffmpeg-from-pyav` (dataloader.py passes it on) makes a
folder of links with the usual names pointing at PyAV's copies and re-runs this script
with LD_LIBRARY_PATH set to it (the loader reads that variable only at process start).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

_FFMPEG_LIBS = ("avutil", "avcodec", "avformat", "avdevice", "avfilter", "swscale",
                "swresample")


def pyav_ffmpeg_env() -> tuple[dict, str]:
    """(environment whose LD_LIBRARY_PATH finds PyAV's bundled FFmpeg by its usual names,
    the folder of links to remove afterwards)."""
    import av

    libs = os.path.join(os.path.dirname(os.path.dirname(av.__file__)), "av.libs")
    links = tempfile.mkdtemp(prefix="pyav_ffmpeg_")
    for name in _FFMPEG_LIBS:
        for f in glob.glob(os.path.join(libs, f"lib{name}-*.so.*")):
            major = os.path.basename(f).split(".so.")[1].split(".")[0]
            os.symlink(f, os.path.join(links, f"lib{name}.so.{major}"))
    env = dict(os.environ)
    # PyAV's libraries find each other through their own folder ($ORIGIN is the link's)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [links, libs] + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else []))
    return env, links


def _short(e: BaseException) -> str:
    """The lines of a torchcodec load failure that say what is missing."""
    text = f"{type(e).__name__}: {e}"
    missing = []
    for ln in text.splitlines():
        ln = ln.strip()
        if ("cannot open shared object" in ln or "undefined symbol" in ln) and ln not in missing:
            missing.append(ln)
    return " | ".join(missing[:3]) if missing else " ".join(text.split())[:400]


def torchcodec_decoder():
    """(decode(path, times) -> uint8 [T, H, W, 3], status dict)."""
    try:
        import torchcodec
        from torchcodec.decoders import VideoDecoder
    except Exception as e:  # noqa: BLE001 - the reason is the finding
        return None, {"available": False, "error": _short(e)}
    status = {"available": True, "version": torchcodec.__version__,
              "module": os.path.dirname(torchcodec.__file__)}

    def decode(path, times):
        d = VideoDecoder(path, device="cpu", num_ffmpeg_threads=1, seek_mode="approximate")
        return d.get_frames_played_at([float(t) for t in times]).data.permute(0, 2, 3, 1).numpy()
    return decode, status


def _pyav_default_rgb(path, times):
    """The same frames as the loader's PyAV path, converted to RGB with swscale's default
    flags instead of the exact ones (ACCURATE_RND | FULL_CHR_H_INT) that match DALI:
    separates the cost of the colour conversion from that of decoding."""
    from moviegen.data import decode, video_io

    saved = video_io.rgb_interpolation
    video_io.rgb_interpolation = lambda: None
    try:
        return decode.decode_video_pyav(path, None, times=np.asarray(times))
    finally:
        video_io.rgb_interpolation = saved


def compare(files: list[dict], repeats: int) -> dict:
    from moviegen.data.decode import decode_video_pyav

    decoders = {"pyav": lambda p, t: decode_video_pyav(p, None, times=np.asarray(t)),
                "pyav_default_rgb": _pyav_default_rgb}
    tc, status = torchcodec_decoder()
    if tc is not None:
        try:
            tc(files[0]["path"], files[0]["times"])
            decoders["torchcodec"] = tc
        except Exception as e:  # noqa: BLE001
            status = {**status, "available": False, "error": _short(e)}
    out: dict[str, dict] = {}
    for f in files:
        key = f"{f['codec']}_{f['size']}"
        ref = None
        for name, fn in decoders.items():
            fn(f["path"], f["times"])                                   # warm caches
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                frames = fn(f["path"], f["times"])
                ts.append(time.perf_counter() - t0)
            entry = out.setdefault(key, {}).setdefault(name, {"s_per_clip": []})
            entry["s_per_clip"].append(statistics.median(ts))
            if ref is None:
                ref = frames
            else:  # same frames? (both pick by time; colour conversion may differ)
                entry.setdefault("mean_abs_diff_vs_pyav", []).append(
                    float(np.abs(ref.astype(np.int16) - frames.astype(np.int16)).mean()))
    for per in out.values():
        for entry in per.values():
            entry["s_per_clip"] = statistics.median(entry["s_per_clip"])
            if "mean_abs_diff_vs_pyav" in entry:
                entry["mean_abs_diff_vs_pyav"] = max(entry["mean_abs_diff_vs_pyav"])
        per["pyav_default_rgb_speed_vs_pyav"] = (per["pyav"]["s_per_clip"]
                                                 / per["pyav_default_rgb"]["s_per_clip"])
        if "torchcodec" in per:
            per["torchcodec_speed_vs_pyav"] = (per["pyav"]["s_per_clip"]
                                               / per["torchcodec"]["s_per_clip"])
    return {"torchcodec": status, "per_set": out}


def run(files: list[dict], repeats: int, ffmpeg_from_pyav: bool) -> dict:
    """compare() in a child process (with PyAV's FFmpeg visible when asked)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(files, fh)
    env, links = pyav_ffmpeg_env() if ffmpeg_from_pyav else (dict(os.environ), None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]]
                                                  if env.get("PYTHONPATH") else []))
    try:
        r = subprocess.run([sys.executable, os.path.abspath(__file__), fh.name,
                            "--repeats", str(repeats)], capture_output=True, text=True,
                           env=env, timeout=1800)
    finally:
        os.remove(fh.name)
        if links:
            shutil.rmtree(links, ignore_errors=True)
    if r.returncode != 0:
        raise RuntimeError(f"cpu_decoders.py failed:\n{r.stderr[-3000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["ffmpeg_from_pyav"] = ffmpeg_from_pyav
    return res


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    with open(a.files) as f:
        files = json.load(f)
    print(json.dumps(compare(files, a.repeats)))


if __name__ == "__main__":
    main()
