"""Machine/versions facts and the markdown table of benchmarks/dataloader.py."""
from __future__ import annotations

import os
import platform

import numpy as np


def versions() -> dict:
    import av
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "av": av.__version__, "numpy": np.__version__}
    for name, mod in (("nvidia-dali", "nvidia.dali"), ("pyarrow", "pyarrow")):
        try:
            out[name] = __import__(mod, fromlist=["__version__"]).__version__
        except Exception:
            out[name] = None
    return out


def machine(load_before) -> dict:
    from moviegen.data.dali_decode import usable_cores

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except Exception:
        pass
    return {"cpu": cpu, "cores_visible": os.cpu_count(), "cores_usable": usable_cores(),
            "platform": platform.platform(),
            "load_avg_1min_before_after": [round(load_before[0], 2),
                                           round(os.getloadavg()[0], 2)]}


def _cell(s: dict | None) -> str:
    if not s:
        return "-"
    return f"{s['clips_per_s']:.2f} [{s['min']:.2f}-{s['max']:.2f}]"


def to_markdown(res: dict) -> str:
    m = res["machine"]
    lines = ["# Data loader benchmark (CPU)", "", f"Command: `{res['command']}`", "",
             f"Machine: {m['cpu']}, {m['cores_usable']} usable cores ({m['cores_visible']} "
             f"visible), {m['platform']}; 1-min load average {m['load_avg_1min_before_after'][0]}"
             f" before, {m['load_avg_1min_before_after'][1]} after (a load above the core "
             "count means other work shared the cores)", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()), "",
             f"Wall time: {res['wall_s']:.0f} s", "",
             "## Loader throughput, clips/s: median [min-max] over repeats", "",
             "| codec | source | clip (T x H x W) | workers | CPU decoder (PyAV) | DALI CPU "
             "| DALI / CPU | DALI, threads = workers (uncapped) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["throughput"]:
        c, d, u = r["cpu"], r.get("dali"), r.get("dali_uncapped")
        shape = "x".join(str(s) for s in c["batch_shape"][2:])
        src = "448x256" if r["size"] == 256 else "1280x720"
        dali = (_cell(d) + f" ({d['dali_threads']} thr)" if d else
                "n/a: DALI CPU has no H.264; rows go to the CPU decoder"
                if r["codec"] == "h264" else "-")
        ratio = f"{r['dali_over_cpu']:.2f}x" if d else "-"
        unc = (_cell(u) + f" ({u['dali_threads']} thr), {r['uncapped_over_cpu']:.2f}x"
               if u else "-")
        lines.append(f"| {r['codec']} | {src} | {shape} | {r['workers']} | {_cell(c)} | "
                     f"{dali} | {ratio} | {unc} |")
    for r in res["throughput"]:
        if "cpu_partial_round" in r:
            c, pr = r["cpu"], r["cpu_partial_round"]
            lines += ["", f"Timing window ({r['codec']} {r['size']}px, {r['workers']} workers, "
                      f"CPU decoder): whole worker rounds {_cell(c)} clips/s ({c['batches']} "
                      f"batches); ending half a round later {_cell(pr)} ({pr['batches']} "
                      f"batches), {pr['clips_per_s'] / c['clips_per_s']:.2f}x: batches decoded "
                      "before the window opened are counted in it."]
    lines += ["", "Sources: 24 fps, 2.5 s at 256 px, 1.5 s at 720p; frames sampled at 16 fps "
              "into 16:9 buckets of area 256^2 (192x336) and 512^2 (384x688). workers = "
              "DataLoader processes (CPU decoder) or threads of DALI's one pipeline, which "
              "the loader caps at the usable cores.", ""]
    dec = res["cpu_decoders"]
    tc = dec["torchcodec"]
    lines += ["## CPU decoders: PyAV vs torchcodec (same frames by time, 1 process, "
              "1 FFmpeg thread)", ""]
    head = "| set | PyAV s/clip (exact RGB, the loader's) | PyAV, swscale default RGB |"
    rule = "|---|---|---|"
    if tc.get("available"):
        lines += [f"torchcodec {tc['version']}" + (" loading PyAV's bundled FFmpeg "
                  "(--torchcodec_ffmpeg_from_pyav)" if dec.get("ffmpeg_from_pyav") else ""), ""]
        head += " torchcodec s/clip | mean abs pixel diff, torchcodec vs exact PyAV |"
        rule += "---|---|"
    else:
        lines += [f"torchcodec could not decode here: `{tc['error']}`", ""]
    lines += [head, rule]
    for key, per in dec["per_set"].items():
        d = per.get("pyav_default_rgb")
        row = (f"| {key} | {per['pyav']['s_per_clip']:.3f} | " + (
               f"{d['s_per_clip']:.3f} ({per['pyav_default_rgb_speed_vs_pyav']:.2f}x, "
               f"diff {d['mean_abs_diff_vs_pyav']:.1f}) |" if d else "- |"))
        if tc.get("available"):
            t = per["torchcodec"]
            row += (f" {t['s_per_clip']:.3f} ({per['torchcodec_speed_vs_pyav']:.2f}x) | "
                    f"{t['mean_abs_diff_vs_pyav']:.1f} |")
        lines.append(row)
    lines += ["", "(Nx) = speed relative to the loader's PyAV path; diffs in 8-bit levels."]
    fb = res["first_batch"]
    j, q = fb["jsonl"], fb["parquet"]
    lines += ["", f"## Time to first batch, {fb['rows']:,}-row manifest "
              f"({fb['manifest_mb']} MB JSONL, {fb['cache_mb']} MB Parquet copy, "
              f"dp_size={fb['dp_size']}, 5 x 5 buckets)", "",
              "| manifest read from | load manifest | + bucketing | + epoch plan "
              "| first batch |", "|---|---|---|---|---|",
              f"| JSONL | {j['load_manifest_s']:.2f} s | {j['plus_bucketing_s']:.2f} s | "
              f"{j['plus_epoch_plan_s']:.2f} s | **{j['time_to_first_batch_s']:.2f} s** |",
              f"| Parquet copy | {q['load_manifest_s']:.2f} s | {q['plus_bucketing_s']:.2f} s | "
              f"{q['plus_epoch_plan_s']:.2f} s | **{q['time_to_first_batch_s']:.2f} s** |", "",
              f"Times are cumulative. The first load parses the JSONL and writes the copy: "
              f"{fb['parse_and_write_cache_s']:.2f} s. Speed-up of the first batch: "
              f"{fb['speedup']:.1f}x.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    # re-renders the markdown of a result JSON: python benchmarks/dataloader_report.py X.json
    import json
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(sys.argv[1]) as f:
        md = to_markdown(json.load(f))
    with open(os.path.splitext(sys.argv[1])[0] + ".md", "w") as f:
        f.write(md)
    print(md)
