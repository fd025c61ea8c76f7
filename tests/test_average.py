"""python -m moviegen.average: exports and DCP checkpoints (tensor by tensor) averaged into
an export that the sampler and train.init_from read; mismatches refused by name."""
import os

import pytest
import torch
from safetensors.torch import load_file

from moviegen.average import main
from moviegen.config import load_config
from moviegen.training.diffusion import DiffusionTrainer
from moviegen.training.export import load_inference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "launch/configs/tiny.yaml")


def _run(out, *extra):
    cfg = load_config(TINY, [f"--output_dir={out}", "--train.steps=4", "--train.val_every=100",
                             "--train.progress_bar=false", "--metrics.tensorboard=false",
                             "--data.num_val=8", "--checkpoint.ema_decay=0.5", *extra])
    trainer = DiffusionTrainer(cfg)
    trainer.fit()
    trainer.close()
    return str(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("avg")
    return _run(d / "a", "--train.seed=1"), _run(d / "b", "--train.seed=2"), d


@pytest.mark.slow
def test_mean_of_two_exports_and_of_their_checkpoints(runs):
    a, b, d = runs
    wa, wb = (load_file(os.path.join(r, "final", "model.safetensors")) for r in (a, b))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)  # two different models
    main(["--inputs", f"{a}/final", "--inputs", f"{b}/final", "--output", str(d / "avg")])
    got = load_file(str(d / "avg" / "model.safetensors"))
    assert got.keys() == wa.keys()
    for k in wa:
        expected = ((wa[k].double() + wb[k].double()) / 2).to(wa[k].dtype)
        assert torch.equal(got[k], expected), k
    # the same from the DCP checkpoints of step 4, read one tensor at a time
    main(["--inputs", f"{a}/checkpoints/step_00000004", "--inputs",
          f"{b}/checkpoints/step_00000004", "--output", str(d / "avg_dcp")])
    from_dcp = load_file(str(d / "avg_dcp" / "model.safetensors"))
    assert all(torch.equal(from_dcp[k], got[k]) for k in got)
    # an export the sampler reads
    model, cfg, _ = load_inference(str(d / "avg"))
    assert cfg.model.name == "tiny" and sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.timeout(120)
def test_the_first_help_example_runs_verbatim(runs, tmp_path):
    """The first command that ``python -m moviegen.average --help`` shows, run as printed
    (space-separated --inputs) where runs/a and runs/b are two real runs."""
    import shlex
    import subprocess
    import sys

    a, b, _ = runs
    help_text = subprocess.run([sys.executable, "-m", "moviegen.average", "--help"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout
    example = next(line.strip() for line in help_text.splitlines()
                   if line.strip().startswith("python -m moviegen.average"))
    assert example == ("python -m moviegen.average --inputs runs/a/final runs/b/final "
                       "--output runs/avg")
    (tmp_path / "runs").mkdir()
    os.symlink(a, tmp_path / "runs" / "a")
    os.symlink(b, tmp_path / "runs" / "b")
    argv = shlex.split(example)
    assert argv[:3] == ["python", "-m", "moviegen.average"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True,
                         text=True, env=env, timeout=100)
    assert out.returncode == 0, out.stderr
    got = load_file(str(tmp_path / "runs" / "avg" / "model.safetensors"))
    wa, wb = (load_file(os.path.join(r, "final", "model.safetensors")) for r in (a, b))
    for k in wa:
        assert torch.equal(got[k], ((wa[k].double() + wb[k].double()) / 2).to(wa[k].dtype)), k


def test_weights_and_ema(runs):
    a, b, d = runs
    main(["--inputs", f"{a}/final", "--inputs", f"{b}/final", "--weights=[3, 1]", "--ema",
          "--output", str(d / "ema_avg")])
    ea, eb = (load_file(os.path.join(r, "final", "ema.safetensors")) for r in (a, b))
    got = load_file(str(d / "ema_avg" / "model.safetensors"))
    for k in ea:
        expected = (0.75 * ea[k].double() + 0.25 * eb[k].double()).to(ea[k].dtype)
        assert torch.equal(got[k], expected), k


def test_mismatched_inputs_are_refused_by_name(runs, tmp_path, capsys):
    a, _, _ = runs
    other = _run(tmp_path / "wide", "--model.dim=128")
    with pytest.raises(SystemExit) as info:
        main(["--inputs", f"{a}/final", "--inputs", f"{other}/final", "--output",
              str(tmp_path / "bad")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "tensor '" in err and "has shape" in err
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit) as info:
        main(["--inputs", f"{a}/final", "--output", str(tmp_path / "one")])
    assert info.value.code == 2
