import pytest

from moviegen.config import (ConfigError, JobConfig, describe, load_config, parse_overrides)

TINY = "launch/configs/tiny.yaml"


def test_tiny_yaml_loads_and_overrides_win():
    cfg = load_config(TINY, ["--train.steps=7", "--model.name", "tiny", "--output_dir=/tmp/x"])
    assert isinstance(cfg, JobConfig)
    assert cfg.train.steps == 7 and cfg.output_dir == "/tmp/x"
    assert cfg.data.latent_width == 12  # from the YAML, not the default


def test_float_field_accepts_int_and_list_of_sections():
    cfg = load_config(None, ["--train.lr=1", "--train.min_lr_ratio=1e-2", "--text.encoders=[{name: byt5, max_length: 16}]"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.min_lr_ratio == 0.01
    assert cfg.text.encoders[0].max_length == 16


@pytest.mark.parametrize("override, needle", [
    ("--train.stepz=3", "unknown key 'train.stepz'"),
    ("--nosuch.key=3", "unknown key 'nosuch'"),
    ("--train.steps=abc", "train.steps: expected int, got str"),
    ("--train.progress_bar=3", "train.progress_bar: expected true/false"),
    ("--model.name=13b", "model.name: '13b' is not a registered size"),
    ("--model.n_heads=5", "model.n_heads: 5 heads do not divide dim 64"),
    ("--train.lr_schedule=linear", "train.lr_schedule"),
    ("--data.latent_width=11", "data.latent_width: 11 is not divisible by the patch width 2"),
    ("--data.latent_frames=64", "exceeds model.max_latent_frames"),
    ("--text.encoders=[{name: gpt}]", "text.encoders[0].name"),
    ("--text.encoders=[{name: ul2, path: /does/not/exist}]", "text.encoders[0].path"),
    ("--model.kernels=cuda", "model.kernels"),
])
def test_bad_values_name_the_key(override, needle):
    from moviegen.training.diffusion import check_job

    with pytest.raises(ConfigError) as e:  # as python -m moviegen.train parses
        load_config(TINY, [override], checks=check_job)
    assert needle in str(e.value)
    # the source of the bad value is named: here the command line (alone, or with the file
    # for a rule between values), never the YAML file alone
    assert str(e.value).startswith(("command line: ", f"{TINY} with the command-line")), \
        str(e.value)


def test_bad_value_in_the_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: -3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: train.steps: must be >= 0"):
        load_config(str(bad), ["--train.lr=0.1"])
    with pytest.raises(ConfigError, match=r"^command line: train.lr: must be > 0"):
        load_config(str(bad), ["--train.lr=-1", "--train.steps=3"])


def test_repeated_list_option_collects_and_scalar_last_wins():
    cfg = load_config(None, ["--train.steps=3", "--train.steps=5", "--metrics.profile_steps=2",
                             "--metrics.profile_steps=4"])
    assert cfg.train.steps == 5 and cfg.metrics.profile_steps == [2, 4]


def test_list_option_takes_space_separated_values_in_every_form():
    """--key a b (what the help texts show), repeated, mixed and as a YAML list."""
    def steps(*args):
        return load_config(None, ["--train.steps=3", *args]).metrics.profile_steps

    assert steps("--metrics.profile_steps", "2", "4", "6") == [2, 4, 6]
    assert steps("--metrics.profile_steps", "2", "4", "--metrics.profile_steps", "6") == [2, 4, 6]
    assert steps("--metrics.profile_steps=[2, 4]") == [2, 4]
    assert steps("--metrics.profile_steps", "2", "--train.steps=5") == [2]
    cfg = load_config(None, ["--model.patch_size", "1", "1", "1", "--train.steps", "7"])
    assert cfg.model.patch_size == [1, 1, 1] and cfg.train.steps == 7
    # a value after a scalar option is still refused (it cannot belong to anything)
    with pytest.raises(ConfigError, match="unexpected argument '8'"):
        load_config(None, ["--train.steps", "7", "8"])


def test_a_value_the_file_leaves_to_its_user_is_required(tmp_path):
    """``???`` in a YAML file (Hydra's convention): an error naming the key, its meaning
    and how to give it, until the command line (or a copy of the file) gives it."""
    f = tmp_path / "stage.yaml"
    f.write_text('text:\n  encoders:\n    - {name: ul2, path: "???"}\n'
                 'data:\n  kind: precomputed\n  precomputed_dir: "???"\n')
    with pytest.raises(ConfigError, match=rf"^{f}: text.encoders\[0\].path: required \(for "
                                          rf"text.encoders\[0\], 'ul2'\).*save_pretrained"):
        load_config(str(f), [f"--output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=rf"^{f}: data.precomputed_dir: required, the file "
                                          rf"leaves it to you: .*moviegen.precompute.*"
                                          rf"give --data.precomputed_dir=\.\.\."):
        load_config(str(f), [f"--output_dir={tmp_path}", "--text.encoders=[{name: ul2}]"])
    (tmp_path / "pre").mkdir()
    (tmp_path / "pre" / "index.json").write_text('{"shards": []}')
    cfg = load_config(str(f), [f"--output_dir={tmp_path}", "--text.encoders=[{name: ul2}]",
                               f"--data.precomputed_dir={tmp_path / 'pre'}"])
    assert cfg.data.precomputed_dir == str(tmp_path / "pre")


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("train: 3\n")
    with pytest.raises(ConfigError, match="train: expected a mapping"):
        load_config(str(scalar))


def test_override_parsing():
    tree = parse_overrides(["--a.b=1", "--a.c", "x", "--d=[1, 2]"])
    assert tree == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}
    with pytest.raises(ConfigError):
        parse_overrides(["steps=3"])


def test_every_field_has_a_docstring():
    from moviegen.config import TAEJobConfig

    for cls in (JobConfig, TAEJobConfig):
        lines = describe(cls)
        undocumented = [l for l in lines if l.rstrip().endswith(":")]
        assert not undocumented, undocumented


@pytest.mark.slow
def test_cli_config_error_exits_before_start(tmp_path):
    import subprocess
    import sys
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "moviegen.train", "--config", TINY,
                        "--model.n_heads=3", f"--output_dir={out}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "model.n_heads" in r.stderr
    assert not out.exists()  # nothing was started or written
