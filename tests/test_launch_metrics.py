"""What a run shows its operators: metrics.jsonl fields, TensorBoard scalars, a profiler
trace for chosen steps, and the one-page plot from ``python -m moviegen.plot RUN_DIR``."""
import json
import os
import subprocess
import sys

import pytest

from moviegen import plot
from moviegen.training.metrics import console_line
from test_checkpoint import make_cfg
from moviegen.training.diffusion import DiffusionTrainer

# multi-process or end-to-end: outside the fast tier (pytest -m "not slow")
pytestmark = pytest.mark.slow

FIELDS = ("step", "loss", "lr", "grad_norm", "step_time_s", "tokens_per_s",
          "tflops_per_device", "mfu", "max_mem_gb", "data_wait_s", "fwd_bwd_s", "optimizer_s",
          "skipped_steps", "skipped_files")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("metrics"))
    cfg = make_cfg(d, 6, "--metrics.tensorboard=true", "--metrics.profile_steps=[3]",
                   "--train.log_every=2")
    DiffusionTrainer(cfg).fit()
    return d


def test_metrics_rows_have_every_field(run_dir):
    rows = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6]
    for r in train:
        assert set(FIELDS) <= r.keys()
        assert r["mfu"] is None  # CPU: no peak to compare against
        assert r["tokens_per_s"] > 0 and r["tflops_per_device"] > 0 and r["max_mem_gb"] > 0
        split = r["data_wait_s"] + r["fwd_bwd_s"] + r["optimizer_s"]
        assert 0 < split <= r["step_time_s"] * 1.01
        assert r["skipped_steps"] == 0 and r["skipped_files"] == 0
    assert any("val_loss" in r for r in rows)


def test_tensorboard_has_the_scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(run_dir, "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/tokens_per_s", "train/mfu", "val/loss"} - {"train/mfu"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4, 6]


def test_profiler_trace_for_the_chosen_step(run_dir):
    files = os.listdir(os.path.join(run_dir, "profile"))
    assert files == ["step3_rank0.json"]
    trace = json.load(open(os.path.join(run_dir, "profile", files[0])))
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any("aten::" in n for n in names)


def test_plot_writes_a_png(run_dir, tmp_path):
    out = plot.main([run_dir, "--output", str(tmp_path / "run.png")])
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(out) > 20_000


def test_console_redirected_to_a_file_has_one_line_per_log_step_and_no_bar(tmp_path):
    """The bar is on by default but stdout/stderr are a file here: no carriage returns,
    one readable line per logged step with the numbers an operator watches."""
    log = tmp_path / "train.log"
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, "-m", "moviegen.train", "--config",
                            "launch/configs/tiny.yaml", "--train.steps=4", "--train.log_every=2",
                            "--train.val_every=100", f"--output_dir={tmp_path / 'run'}"],
                           stdout=f, stderr=subprocess.STDOUT, timeout=240)
    text = log.read_bytes().decode()  # read_text would turn "\r" into "\n"
    assert r.returncode == 0, text
    assert "\r" not in text
    lines = [x for x in text.splitlines() if "| loss " in x]
    assert [x.split("train step ")[1].split(" |")[0] for x in lines] == ["2/4", "4/4"]
    for x in lines:
        for part in ("lr ", "tok/s", "TFLOP/s", "mem ", "data wait ", "ETA "):
            assert part in x, (part, x)


def test_console_line_prefers_mfu_and_skips_missing_numbers():
    row = {"step": 30, "loss": 0.5, "lr": 1e-4, "tokens_per_s": 12345.0,
           "tflops_per_device": 400.0, "mfu": 0.4, "step_time_s": 1.5, "max_mem_gb": 61.2,
           "data_wait_s": 0.004}
    line = console_line(row, 100, 3725)
    assert line == ("step 30/100 | loss 0.5000 | lr 1.00e-04 | 12,345 tok/s | MFU 40.0% | "
                    "1.50 s/step | mem 61.2 GB | data wait 4 ms | ETA 1:02:05")
    row.update(tokens_per_s=None, mfu=None, tflops_per_device=None, loss=float("nan"))
    assert console_line(row, 100, None) == ("step 30/100 | lr 1.00e-04 | 1.50 s/step | "
                                            "mem 61.2 GB | data wait 4 ms")
