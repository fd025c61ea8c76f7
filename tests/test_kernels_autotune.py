"""moviegen/kernels/autotune.py: a config that fails to build is dropped on its own, with a warning."""
from kernel_helpers import select_triton_mode

select_triton_mode()  # before triton is imported (kernels are decorated at import)

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton", reason="triton is not installed")
import triton.language as tl  # noqa: E402

from moviegen.kernels.autotune import autotune  # noqa: E402
from kernel_helpers import DEVICE, use_gpu  # noqa: E402


def _timer(fn, quantiles=None):
    fn()  # the interpreter has no CUDA events: any finite time will do
    return [1.0, 1.0, 1.0]


def _tuned(configs):
    extra = {} if use_gpu() else {"do_bench": _timer}

    @autotune(configs=configs, key=["n"], **extra)
    @triton.jit
    def copy_kernel(src, dst, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)  # BLOCK = 12 is not a power of two: the build fails
        tl.store(dst + offs, tl.load(src + offs, mask=offs < n), mask=offs < n)
    return copy_kernel


def test_failing_config_is_dropped_not_fatal():
    kernel = _tuned([triton.Config({"BLOCK": 12}), triton.Config({"BLOCK": 16})])
    src = torch.arange(10, dtype=torch.float32, device=DEVICE)
    dst = torch.zeros_like(src)
    with pytest.warns(UserWarning, match="dropping config"):
        kernel[(1,)](src, dst, 10)
    assert torch.equal(dst, src)
    assert kernel.best_config.kwargs["BLOCK"] == 16


def test_every_config_failing_reaches_the_caller():
    kernel = _tuned([triton.Config({"BLOCK": 12}), triton.Config({"BLOCK": 24})])
    src = torch.zeros(4, device=DEVICE)
    with pytest.warns(UserWarning), pytest.raises(Exception):
        kernel[(1,)](src, torch.zeros_like(src), 4)
