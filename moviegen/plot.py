"""One-page summary of a run: loss, throughput, step time split and lr over steps.

    python -m moviegen.plot runs/tiny              # writes runs/tiny/run.png
    python -m moviegen.plot runs/tiny --output /tmp/tiny.png

Reads ``<RUN_DIR>/metrics.jsonl``; needs only matplotlib (Agg backend, no display).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from moviegen.config import check, run_cli
from moviegen.training.metrics import read_metrics


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    # the last row per step wins (a resumed run rewrites the steps it recomputed)
    by_step = {r["step"]: r[key] for r in rows if r.get(key) is not None}
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def plot_run(run_dir: str, output: str | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}/metrics.jsonl has no rows")
    output = output or os.path.join(run_dir, "run.png")
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    ax = axes[0][0]
    ax.plot(*_series(rows, "loss"), label="train loss")
    ax.plot(*_series(rows, "val_loss"), "o-", label="validation loss")
    ax.set_title("loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    steps_psnr, psnr = _series(rows, "psnr")  # a TAE run validates with PSNR
    if psnr:
        twin = ax.twinx()
        twin.plot(steps_psnr, psnr, "s-", color="tab:red", label="held-out PSNR")
        twin.set_ylabel("held-out PSNR (dB)", color="tab:red")
        twin.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax = axes[0][1]
    ax.plot(*_series(rows, "tokens_per_s"), color="tab:green")
    ax.set_title("throughput")
    ax.set_xlabel("step")
    ax.set_ylabel("tokens/s per device")
    steps_mfu, mfu = _series(rows, "mfu")
    if mfu:
        twin = ax.twinx()
        twin.plot(steps_mfu, [100 * m for m in mfu], color="tab:red", alpha=0.6)
        twin.set_ylabel("MFU %", color="tab:red")
    ax = axes[1][0]
    for key in ("data_wait_s", "fwd_bwd_s", "optimizer_s", "step_time_s"):
        s, v = _series(rows, key)
        if v:
            ax.plot(s, v, label=key)
    ax.set_title("step time split")
    ax.set_xlabel("step")
    ax.set_ylabel("seconds per step")
    ax.legend()
    ax = axes[1][1]
    ax.plot(*_series(rows, "lr"), color="tab:purple", label="lr")
    ax.set_title("learning rate and grad norm")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate", color="tab:purple")
    s, g = _series(rows, "grad_norm")
    if g:
        twin = ax.twinx()
        twin.plot(s, g, color="tab:orange", alpha=0.6)
        twin.set_ylabel("grad norm", color="tab:orange")
    last = rows[-1]
    skipped = max((r.get("skipped_steps") or 0 for r in rows), default=0)
    fig.suptitle(f"{os.path.basename(os.path.abspath(run_dir))}: step {last.get('step')}, "
                 f"skipped steps {skipped}")
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


@dataclass
class PlotArgs:
    run_dir: str
    """output_dir of a run (holds metrics.jsonl); may also be given as the first argument."""
    output: Optional[str] = None
    """PNG path (default RUN_DIR/run.png)."""

    def validate(self) -> None:
        check(os.path.isfile(os.path.join(self.run_dir, "metrics.jsonl")), "run_dir",
              f"no metrics.jsonl in '{self.run_dir}'")


def main(argv=None) -> str:
    def run(a: PlotArgs) -> str:
        path = plot_run(a.run_dir, a.output)
        print(path)
        return path

    return run_cli(run, PlotArgs, argv, __doc__, config_file=False, positional="run_dir")


if __name__ == "__main__":
    main()
