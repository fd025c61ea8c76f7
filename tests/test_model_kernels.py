"""The model with ``kernels: triton`` computes what it computes with ``kernels: torch``."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from moviegen import kernels  # noqa: E402
from moviegen.models.transformer import ModelArgs, build_model  # noqa: E402

pytestmark = pytest.mark.skipif(not kernels.triton_available(), reason="triton is not installed")


def test_triton_and_torch_paths_agree_forward_and_backward():
    torch.manual_seed(0)
    args = ModelArgs(dim=32, n_heads=2, ffn_dim=48, n_layers=1, text_dims={"byt5": 16},
                     max_t=2, max_h=4, max_w=4)
    ref = build_model(args)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tri = build_model(args)
    tri.load_state_dict(ref.state_dict())
    assert ref.set_kernel_backend("torch") == "torch"
    assert tri.set_kernel_backend("triton", "cpu") == "triton"
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 2, 6, 4, generator=g)  # non-square grid (2, 3, 2)
    t = torch.rand(2, generator=g)
    e = {"byt5": torch.randn(2, 5, 16, generator=g)}
    m = {"byt5": torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)}  # one empty caption
    out_ref, out_tri = ref(x, t, e, m), tri(x, t, e, m)
    assert torch.allclose(out_tri, out_ref, atol=2e-5, rtol=1e-4)
    out_ref.square().sum().backward()
    out_tri.square().sum().backward()
    p_tri = dict(tri.named_parameters())
    for name, p in ref.named_parameters():
        assert torch.allclose(p_tri[name].grad, p.grad, atol=5e-5, rtol=1e-3), name
