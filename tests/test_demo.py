"""The whole path on a fresh directory: files -> TAE -> precompute -> transformer -> video."""
import json
import subprocess
import sys

import numpy as np
import pytest


av = pytest.importorskip("av")


def count_frames(path):
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.mark.slow  # the whole demo, every stage shrunk
def test_quick_demo_runs_every_stage_and_the_sampler_writes_playable_video(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "moviegen.demo", "--quick", "--output_dir", str(out)],
                       capture_output=True, timeout=600)  # bytes: text mode would hide "\r"
    stdout, stderr = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, stderr[-3000:]
    summary = json.loads((out / "demo_summary.json").read_text())
    assert set(summary["wall_times_s"]) >= {"data", "tae", "precompute", "transformer", "sample",
                                            "conditioned", "total"}
    assert summary["tae"]["psnr_db"] is not None
    assert summary["transformer"]["steps"] == 20
    assert (out / "loss.png").stat().st_size > 1000
    held_out = [s for s in summary["samples"] if not s["seen_in_training"]]
    assert len(held_out) == 1 and held_out[0]["prompt"] == summary["held_out_caption"]
    for s in summary["samples"]:
        assert count_frames(s["video"]) == 16
        assert len(s["track_xy"]) == 16
        assert {"colour", "motion", "shape", "ok"} <= s.keys()
        assert s["colour"]["expected"] == s["prompt"].split()[1]
    # it narrates: the plan up front, a result line per stage, per-sample verdicts, the
    # paths; precompute is one line, not a JSON dump; no bar in a captured log
    stages = ("data", "tae", "precompute", "transformer", "sample", "conditioned", "plot")
    for i, stage in enumerate(stages, 1):
        assert f"[demo]   {i}. {stage}" in stdout and f"[demo {i}/7] {stage} done in" in stdout
    assert stdout.count("colour ") >= 4 and "motion " in stdout
    assert str(out / "demo_summary.json") in stdout
    assert '"written"' not in stdout and "precompute: train" in stdout
    assert "\r" not in stdout + stderr
    # image-to-video and extension of a clip of the held-out caption, measured
    i2v, ext = summary["i2v"], summary["extend"]
    assert count_frames(i2v["video"]) == 16 and len(i2v["track_xy"]) == 16
    assert np.isfinite(i2v["first_frame_psnr_db"]) and isinstance(i2v["moves_as_captioned"], bool)
    assert ext["frames_in"] == 16 and ext["frames_out"] == 32 == count_frames(ext["video"])
    assert len(ext["track_xy"]) == ext["frames_out"] and ext["joins"] == [16, 24]
    assert np.isfinite(ext["seam_psnr_db"]) and isinstance(ext["moves_as_captioned"], bool)
    assert (out / "conditioned.png").stat().st_size > 1000 and summary["strip"].endswith(".png")
    assert "i2v from the held-out clip's first frame" in stdout and "seam" in stdout
    # the held-out pairing really is absent from the training data
    rows = [json.loads(l) for l in open(out / "data" / "manifest.jsonl")]
    assert not any("red" in r["caption"] and "from right to left" in r["caption"] for r in rows)
    # the sampler CLI: TAE decode from the export alone, playable file + GIF
    target = tmp_path / "cli.webm"
    r = subprocess.run([sys.executable, "-m", "moviegen.sample", "--checkpoint",
                        str(out / "transformer" / "final"), "--prompt", "a blue circle moves from top to bottom",
                        "--output", str(target), "--steps", "4"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert count_frames(target) == 16
    assert (tmp_path / "cli.gif").exists()
    assert not (tmp_path / "cli.pt").exists()  # only what was asked for is written


def test_judge_reads_colour_motion_and_shape():
    import torch

    from moviegen.data.synthetic import COLORS, DIRECTIONS, draw_shape
    from moviegen.demo.judge import judge

    palette = ("red", "green", "blue", "yellow")
    for shape in ("circle", "square"):
        for direction, ((x0, y0), (x1, y1)) in DIRECTIONS.items():
            frames = [draw_shape(48, 48, shape, COLORS["yellow"],
                                 (x0 + (x1 - x0) * k / 7, y0 + (y1 - y0) * k / 7), 14)
                      for k in range(8)]
            video = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1
            v = judge(video, f"a yellow {shape} moves {direction}", palette)
            assert v["motion"]["ok"] and v["shape"]["ok"], (shape, direction, v)
            assert v["colour"]["seen"] == "yellow" and v["colour"]["fraction"] > 0.8
            # the same video judged against another caption: the colour is wrong
            v = judge(video, f"a red {shape} moves {direction}", palette)
            assert not v["colour"]["ok"] and v["colour"]["seen"] == "yellow"
    empty = torch.from_numpy(np.stack([draw_shape(48, 48, "circle", COLORS["red"], (0.5, 0.5), 0)] * 4))
    v = judge(empty.permute(3, 0, 1, 2).float() / 127.5 - 1, "a red circle moves from left to "
              "right", palette)
    assert v["motion"]["seen"] == "no shape found" and not v["colour"]["ok"]


def test_demo_commands_answer_help_and_the_conditioned_stage_names_what_it_needs(tmp_path):
    """``python -m moviegen.demo`` (the package's __main__) and ``python -m
    moviegen.demo.conditioned`` are commands; the latter on a directory without a demo
    run says to run the demo first."""
    for module in ("moviegen.demo", "moviegen.demo.conditioned"):
        r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"python -m {module} " in r.stdout and "--output_dir" in r.stdout
    r = subprocess.run([sys.executable, "-m", "moviegen.demo.conditioned", "--output_dir",
                        str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "run python -m moviegen.demo first" in r.stderr
