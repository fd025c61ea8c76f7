"""Do the demo's verdicts hold for other seeds and thread counts?

Retrains the demo's transformer stage (``launch/configs/demo.yaml``, the same 2,000 steps
and task mix) with other ``train.seed`` values and ``OMP_NUM_THREADS``, on the TAE,
latents and data of an existing demo run (so only the transformer and sampling change),
then samples and judges exactly as the demo does (the held-out caption and three seen
ones, image-to-video and a 2x extension of a held-out clip), with the sampling seed equal
to the training seed. Runs with one thread go two at a time on separate cores.

    python benchmarks/demo_robustness.py --demo_dir runs/demo --runs 1:1 1:2 2:1

writes ``<output>/<threads>t_seed<seed>/`` per run, a table and ``robustness.json``
(``--output``, default ``runs/demo_robustness``). Add the demo's own run with
``--include_demo`` (its summary is read, not recomputed).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _prepare(demo_dir: str, run_dir: str) -> None:
    os.makedirs(run_dir, exist_ok=True)
    for name in ("tae", "latents", "data"):
        link = os.path.join(run_dir, name)
        if not os.path.exists(link):
            os.symlink(os.path.abspath(os.path.join(demo_dir, name)), link)


def _train_cmd(run_dir: str, seed: int) -> list[str]:
    from moviegen.demo.pipeline import DEMO_CONFIG, FULL, job_overrides

    manifest = os.path.join(run_dir, "data", "manifest.jsonl")
    return [sys.executable, "-m", "moviegen.train", "--config", DEMO_CONFIG,
            *job_overrides(run_dir, manifest, FULL["steps"]), f"--train.seed={seed}",
            "--train.progress_bar=false"]


def _judge(run_dir: str, seed: int, threads: int) -> dict:
    """Sampling and judging in a child with the run's thread count."""
    code = ("import json, sys\n"
            "from moviegen.demo.conditioned import stage_conditioned\n"
            "from moviegen.demo.pipeline import stage_sample\n"
            "from moviegen.demo.scene import DEMO_COLORS, HELD_OUT_PROMPT, SAMPLE_PROMPTS\n"
            f"d, s = {run_dir!r}, {seed}\n"
            "r = stage_sample(d, list(SAMPLE_PROMPTS), seed=s)\n"
            "r.update(stage_conditioned(d, HELD_OUT_PROMPT, DEMO_COLORS, seed=s))\n"
            "json.dump(r, open(d + '/judged.json', 'w'))\n")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    with open(os.path.join(run_dir, "judged.json")) as f:
        return json.load(f)


def _row(name: str, threads: int, seed: int, r: dict, seconds: float | None) -> dict:
    held = next(s for s in r["samples"] if not s["seen_in_training"])
    seen = [s for s in r["samples"] if s["seen_in_training"]]
    return {"run": name, "threads": threads, "seed": seed, "train_s": seconds,
            "held_out_colour": held["colour"]["ok"], "held_out_motion": held["motion"]["ok"],
            "held_out_shape": held["shape"]["ok"],
            "seen_colour_motion_ok": sum(s["colour"]["ok"] and s["motion"]["ok"] for s in seen),
            "seen_shape_ok": sum(s["shape"]["ok"] for s in seen), "seen": len(seen),
            "i2v_first_frame_db": r["i2v"]["first_frame_psnr_db"],
            "i2v_moves": r["i2v"]["moves_as_captioned"],
            "extend_seam_db": r["extend"]["seam_psnr_db"],
            "extend_moves": r["extend"]["moves_as_captioned"]}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo_dir", default="runs/demo", help="a finished demo run")
    p.add_argument("--runs", nargs="+", default=["1:1", "1:2", "2:1"],
                   help="THREADS:SEED pairs to train and judge")
    p.add_argument("--include_demo", action="store_true",
                   help="add the demo run itself (2 threads, seed 0) from its summary")
    p.add_argument("--output", default="runs/demo_robustness")
    a = p.parse_args(argv)
    if not os.path.isfile(os.path.join(a.demo_dir, "demo_summary.json")):
        p.error(f"--demo_dir: no demo_summary.json in '{a.demo_dir}' (run "
                "bash scripts/quickstart.sh demo first)")
    runs = []
    for spec in a.runs:
        try:
            threads, seed = (int(x) for x in spec.split(":"))
        except ValueError:
            p.error(f"--runs: '{spec}' is not THREADS:SEED (e.g. 1:2)")
        runs.append((threads, seed))
    rows = []
    if a.include_demo:
        with open(os.path.join(a.demo_dir, "demo_summary.json")) as f:
            demo = json.load(f)
        rows.append(_row("demo", demo.get("threads", 2), 0, demo,
                         demo.get("wall_times_s", {}).get("transformer")))
    # one-thread runs two at a time, others alone
    pending = sorted(runs, key=lambda r: r[0])
    while pending:
        batch = [pending.pop(0)]
        if batch[0][0] == 1 and pending and pending[0][0] == 1:
            batch.append(pending.pop(0))
        procs = []
        for threads, seed in batch:
            run_dir = os.path.join(a.output, f"{threads}t_seed{seed}")
            _prepare(a.demo_dir, run_dir)
            log = open(os.path.join(run_dir, "train.log"), "w")
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            procs.append((threads, seed, run_dir, time.perf_counter(),
                          subprocess.Popen(_train_cmd(run_dir, seed), cwd=ROOT, env=env,
                                           stdout=log, stderr=subprocess.STDOUT)))
        for threads, seed, run_dir, t0, proc in procs:
            if proc.wait() != 0:
                raise SystemExit(f"training failed: see {run_dir}/train.log")
            seconds = time.perf_counter() - t0
            rows.append(_row(f"{threads}t_seed{seed}", threads, seed,
                             _judge(run_dir, seed, threads), round(seconds, 1)))
            print(json.dumps(rows[-1]), flush=True)
    os.makedirs(a.output, exist_ok=True)
    with open(os.path.join(a.output, "robustness.json"), "w") as f:
        json.dump(rows, f, indent=1)
    cols = list(rows[0])
    table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    table += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    with open(os.path.join(a.output, "robustness.md"), "w") as f:
        f.write("\n".join(table) + "\n")
    print("\n".join(table))
    return rows


if __name__ == "__main__":
    main()
