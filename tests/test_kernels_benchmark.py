"""benchmarks/kernel_bench.py: argument parsing, the CPU exit, and the --check harness (run in
the interpreter at tiny shapes, fp16, so the GPU check itself is known to work)."""
import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (kernels are decorated at import)

import importlib.util  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load():
    spec = importlib.util.spec_from_file_location("bench_kernels", os.path.join(ROOT, "benchmarks", "kernel_bench.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments_and_cpu_exit(capsys):
    bench = _load()
    args = bench.parse_args(["--quick", "--dims", "128", "--ops", "attention"])
    assert args.quick and args.dims == "128" and args.dtype == "bf16"
    if not torch.cuda.is_available():
        assert bench.main([]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err


def test_check_harness_in_interpreter(capsys):
    pytest.importorskip("triton", reason="triton is not installed")
    bench = _load()
    assert bench.run_check(device="cpu", dtypes=(torch.float16,), small=True) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and out.count("ok  ") >= 20


def test_report_names_device_versions_and_targets():
    bench = _load()
    rows = [{"op": "gated_residual", "shape": "s", "impl": impl, "pass": "fwd", "ms": ms,
             "GB/s": 1.0, "pct_of_copy": pct} for impl, ms, pct in (("triton", 1.0, 90.0), ("compile", 2.0, 45.0))]
    rows += [{"op": "self_attention", "shape": "a", "impl": impl, "pass": "fwd+bwd", "ms": 1.0, "TFLOP/s": t}
             for impl, t in (("triton", 400.0), ("sdpa_flash", 500.0))]
    rows.append({"op": "self_attention", "shape": "a", "impl": "sdpa_cudnn", "error": "RuntimeError: no"})
    meta = {"device": "NVIDIA H100", "torch": "2.11", "triton": "3.6", "dtype": "bf16", "date": "today",
            "command": "python benchmarks/kernel_bench.py", "copy_GB/s": 3000.0}
    text = bench.markdown(meta, rows)
    for needle in ("NVIDIA H100", "torch 2.11", "triton 3.6", "`python benchmarks/kernel_bench.py`", "3000 GB/s",
                   "90.0% of copy BW", "2.00x", "sdpa_flash 500 TFLOP/s", "0.80x", "error: RuntimeError"):
        assert needle in text, needle
