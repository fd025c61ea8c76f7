"""kernels.dispatch: backend resolution, the ``auto`` choice and its fallback, and both
paths giving the same numbers."""
import json
import os

from kernel_helpers import select_triton_mode

select_triton_mode()  # before triton is imported (kernels are decorated at import)

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from moviegen import kernels  # noqa: E402
from moviegen.kernels import choice, reference  # noqa: E402
from kernel_helpers import DEVICE, use_gpu  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_resolve_backend_rules(monkeypatch):
    assert kernels.resolve_backend("torch", CUDA) == "torch"
    assert kernels.resolve_backend("auto", CPU) == "torch"
    with pytest.raises(ValueError, match="must be one of"):
        kernels.resolve_backend("cuda", CPU)
    if kernels.triton_available():
        assert kernels.resolve_backend("auto", CUDA) == "auto"  # chosen per op at call time
        if not use_gpu():
            assert kernels.resolve_backend("triton", "cpu") == "triton"  # TRITON_INTERPRET=1 here
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="needs CUDA tensors"):
            kernels.resolve_backend("triton", CPU)


def test_import_without_triton_falls_back_to_torch():
    """With triton unimportable, `import kernels` works, auto -> torch, triton -> clear error."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\nfrom moviegen import kernels\n"
        "assert kernels.resolve_backend('auto', torch.device('cuda')) == 'torch'\n"
        "x = torch.randn(1, 2, 8)\n"
        "kernels.modulated_rms_norm(x, None, torch.randn(1, 8), torch.randn(1, 8))\n"
        "try:\n"
        "    kernels.resolve_backend('triton', torch.device('cuda'))\n"
        "except RuntimeError as e:\n"
        "    assert 'not installed' in str(e)\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
        "assert 'moviegen.kernels.flash_attention' not in sys.modules\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def _rand(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(DEVICE).requires_grad_()


@pytest.mark.skipif(not kernels.triton_available(), reason="triton is not installed")
def test_triton_and_torch_paths_agree():
    B, S, D, H, E, L = 2, 12, 32, 2, 16, 9
    grid, offset = (2, 3, 4), 6
    x, h = _rand(B, S, D, seed=1), _rand(B, S, D, seed=2)
    w, scale, shift, gate = _rand(D, seed=3), _rand(B, D, seed=4), _rand(B, D, seed=5), _rand(B, D, seed=6)
    pt, ph, pw = _rand(3, D, seed=7), _rand(3, D, seed=8), _rand(4, D, seed=9)
    q, k, v = _rand(B, H, S, E, seed=10), _rand(B, H, L, E, seed=11), _rand(B, H, L, E, seed=12)
    mask = torch.ones(B, L, dtype=torch.bool, device=DEVICE)
    mask[1, 5:] = False
    leaves = [x, h, w, scale, shift, gate, pt, ph, pw, q, k, v]

    def run(backend):
        y = kernels.modulated_rms_norm(x, w, scale, shift, 1e-6, backend=backend)
        r = kernels.gated_residual(x, gate, h, backend=backend)
        p = kernels.add_factorized_pos_embed(x, pt, ph, pw, grid, offset, backend=backend)
        a = kernels.attention(q, k, v, mask, backend=backend)
        outs = [y, r, p, a]
        loss = sum((o * torch.linspace(-1, 1, o.numel(), device=DEVICE).view_as(o)).sum() for o in outs)
        return outs + list(torch.autograd.grad(loss, leaves))

    for got, want in zip(run("triton"), run("torch")):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not kernels.triton_available(), reason="triton is not installed")
def test_attention_auto_falls_back_for_unsupported_shapes(monkeypatch):
    """Under 'auto' a head dim the kernel lacks uses the reference; under 'triton' it raises."""
    import moviegen.kernels.dispatch as dispatch
    monkeypatch.setattr(dispatch, "resolve_backend",
                        lambda setting, device: "auto" if setting == "auto" else setting)
    q = torch.randn(1, 1, 4, 24, device=DEVICE)
    torch.testing.assert_close(kernels.attention(q, q, q, backend="auto"),
                               reference.attention_reference(q, q, q))
    with pytest.raises(ValueError, match="head dim 24"):
        kernels.attention(q, q, q, backend="triton")


@pytest.mark.slow
@pytest.mark.skipif(not kernels.triton_available(), reason="triton is not installed")
def test_triton_path_compiles_without_graph_breaks():
    """The launchers are torch.library custom ops: torch.compile(fullgraph=True) traces the
    autograd Functions around them (forward and backward) and matches eager."""
    from moviegen.kernels.flash_attention import flash_attention
    from moviegen.kernels.modulation import gated_residual, modulated_rms_norm
    from moviegen.kernels.pos_embed import add_factorized_pos_embed

    B, S, D, H, E = 2, 6, 32, 2, 16
    x, h = _rand(B, S, D, seed=1), _rand(B, S, D, seed=2)
    w, scale, shift, gate = _rand(D, seed=3), _rand(B, D, seed=4), _rand(B, D, seed=5), _rand(B, D, seed=6)
    pt, ph, pw = _rand(2, D, seed=7), _rand(2, D, seed=8), _rand(3, D, seed=9)
    mask = torch.tensor([[True] * 5 + [False], [False] * 6], device=DEVICE)
    leaves = [x, h, w, scale, shift, gate, pt, ph, pw]

    def block(x, h, w, scale, shift, gate, pt, ph, pw):
        x = add_factorized_pos_embed(x, pt, ph, pw, (2, 1, 3), 0)
        y = modulated_rms_norm(x, w, scale, shift, 1e-6)
        q = y.view(B, S, H, E).transpose(1, 2)
        # distinct q, k, v: Dynamo cannot trace an autograd.Function given one tensor twice
        a = flash_attention(q, q * 0.5, q + 1.0, mask).transpose(1, 2).reshape(B, S, D)
        x_new = gated_residual(x, gate, a + h)
        y2 = modulated_rms_norm(x_new, w, scale, shift, 1e-6)
        return (x_new * y2).sum()

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    loss_eager = block(*leaves)
    grads_eager = torch.autograd.grad(loss_eager, leaves)
    loss_compiled = compiled(*leaves)
    grads_compiled = torch.autograd.grad(loss_compiled, leaves)
    torch.testing.assert_close(loss_compiled, loss_eager)
    for a, b in zip(grads_compiled, grads_eager):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- auto choice

@pytest.fixture
def auto_on_this_device(monkeypatch, tmp_path):
    """'auto' resolved as on a CUDA machine, a fresh table and timing cache."""
    import moviegen.kernels.dispatch as dispatch
    monkeypatch.setattr(dispatch, "resolve_backend",
                        lambda setting, device: "auto" if setting == "auto" else setting)
    monkeypatch.setattr(choice, "_device_name", lambda device: "Test GPU")
    monkeypatch.setenv("MOVIEGEN_KERNELS_CACHE", str(tmp_path))
    monkeypatch.delenv("MOVIEGEN_KERNELS_TIME", raising=False)
    monkeypatch.setattr(choice, "_failed", set())
    monkeypatch.setattr(choice, "_timed", {})
    table = tmp_path / "choices.json"
    table.write_text("{}")
    monkeypatch.setattr(choice, "TABLE", str(table))
    yield table


def _count_calls(monkeypatch, module, name):
    calls = []
    fn = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or fn(*a, **k))
    return calls


def test_committed_table_is_valid_and_unmeasured_means_torch():
    table = choice.load_table()
    assert isinstance(table, dict)
    for device, ops in table.items():
        for op, classes in ops.items():
            assert all(v in ("triton", "torch") for v in classes.values()), (device, op)
    assert choice.choose("attention", "bf16 E128 mask0 S8192 L8192", torch.device("cpu")) == "torch"


@pytest.mark.skipif(not kernels.triton_available(), reason="triton is not installed")
def test_auto_uses_torch_unless_the_table_says_triton(auto_on_this_device, monkeypatch):
    import moviegen.kernels.flash_attention as fa
    calls = _count_calls(monkeypatch, fa, "flash_attention")
    q = torch.randn(1, 2, 8, 16, device=DEVICE)
    klass = choice.shape_class("attention", q, q, masked=False)
    kernels.attention(q, q, q, backend="auto")
    assert not calls  # empty table: SDPA
    table = auto_on_this_device.with_name("measured.json")
    table.write_text(json.dumps({"Test GPU": {"attention": {klass: "triton"}}}))
    monkeypatch.setattr(choice, "TABLE", str(table))
    torch.testing.assert_close(kernels.attention(q, q, q, backend="auto"),
                               reference.attention_reference(q, q, q), atol=1e-4, rtol=1e-4)
    assert len(calls) == 1
    kernels.attention(q, q[:, :, :4], q[:, :, :4], backend="auto")  # another class: torch
    assert len(calls) == 1


def test_timed_choice_is_cached_on_disk_and_reused(auto_on_this_device, monkeypatch, tmp_path):
    monkeypatch.setenv("MOVIEGEN_KERNELS_TIME", "1")
    timings = []
    timer = lambda: timings.append(1) or {"triton": 1.0, "torch": 2.0}  # noqa: E731
    dev = torch.device("cpu")
    assert choice.choose("gated_residual", "bf16 D64", dev, timer) == "triton"
    assert choice.choose("gated_residual", "bf16 D64", dev, timer) == "triton"
    assert len(timings) == 1
    saved = json.loads(open(choice._cache_path(dev)).read())
    assert saved == {"gated_residual": {"bf16 D64": "triton"}}
    monkeypatch.setattr(choice, "_timed", {})  # a new process reads the disk cache
    assert choice.choose("gated_residual", "bf16 D64", dev, lambda: 1 / 0) == "triton"
    assert choice.choose("gated_residual", "bf16 D128", dev,
                         lambda: {"triton": 3.0, "torch": 2.0}) == "torch"


def test_failing_kernel_falls_back_with_one_warning(auto_on_this_device, monkeypatch):
    import warnings
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("PassManager::run failed")

    with pytest.warns(UserWarning, match="failed for bf16 D8"):
        assert choice.run_with_fallback("gated_residual", "bf16 D8", broken, lambda: "ref") == "ref"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, and the kernel is not retried
        assert choice.choose("gated_residual", "bf16 D8", torch.device("cpu")) == "torch"
    assert len(calls) == 1


def test_auto_on_cuda_without_measurements_never_calls_a_kernel(auto_on_this_device, monkeypatch):
    """Every op under auto with an empty table runs the torch path (SDPA for attention)."""
    import moviegen.kernels.dispatch as dispatch
    monkeypatch.setattr(dispatch, "_triton", lambda module: (_ for _ in ()).throw(
        AssertionError(f"kernel module {module} used")) if module != "flash_attention"
        else __import__("moviegen.kernels.flash_attention", fromlist=["x"]))
    x = torch.randn(1, 3, 8, device=DEVICE)
    v = torch.randn(1, 8, device=DEVICE)
    kernels.modulated_rms_norm(x, None, v, v, backend="auto")
    kernels.gated_residual(x, v, x, backend="auto")
    kernels.add_factorized_pos_embed(x, torch.zeros(1, 8, device=DEVICE), torch.zeros(1, 8, device=DEVICE),
                                     torch.zeros(3, 8, device=DEVICE), (1, 1, 3), backend="auto")
