"""Multi-process equivalence checks: a parallel layout vs the one-process run (gloo, CPU).

``spawn(fn, world_size, timeout_s, *args)`` starts ``world_size`` processes that each
run ``fn(rank, world_size, *args)`` with a gloo rendezvous prepared in the environment;
it returns each rank's return value (or raises with every rank's traceback). A rank that
does not finish within the timeout is killed: a hang fails fast.

``check_layouts`` runs several layouts in one process group (one spawn per world size):
each rank builds the tiny fp32 model, the one-process reference of the same step on the
full batch, and the parallel model loaded with the same weights; then it compares the
loss (rel 1e-5), every gradient after ``full_tensor()`` and the parameters after three
AdamW steps.
"""
from __future__ import annotations

import math
import os
import socket
import tempfile
import traceback

import torch

# --------------------------------------------------------------------------- spawning


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (rendezvous, test daemons)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn, rank, world_size, port, out_path, args):
    import pickle
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    try:
        result = ("ok", fn(rank, world_size, *args))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        result = ("error", f"rank {rank}: {type(e).__name__}: {e}\n{traceback.format_exc()}")
    with open(out_path, "wb") as f:
        pickle.dump(result, f)


def launch_failure(name: str, out) -> str:
    """What a failed ``torchrun`` subprocess printed that explains it: each rank's crash
    lines (Python's fault handler, glibc's heap checks, the last exception line) and the
    launcher's summary, rather than only the tail, where one rank's crash is often cut
    off by the others' "connection closed" tracebacks."""
    keys = ("Fatal Python error", "malloc", "free()", "corrupt", "Error:", "error:",
            "exitcode", "Segmentation", "Aborted")
    lines = [ln for ln in out.stderr.splitlines() if any(k in ln for k in keys)]
    return (f"{name}: exit {out.returncode}\n" + "\n".join(lines[-60:])
            + "\n--- tail ---\n" + out.stderr[-1500:])


def spawn(fn, world_size: int, timeout_s: float, *args) -> list:
    import pickle
    import time

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="moviegen-spawn-")
    paths = [os.path.join(tmp, f"rank{r}.pkl") for r in range(world_size)]
    procs = [ctx.Process(target=_entry, args=(fn, r, world_size, port, paths[r], args))
             for r in range(world_size)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(deadline - time.monotonic(), 0.1))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for r in hung:
        procs[r].kill()
        procs[r].join(5)
    results, errors = [], []
    for r, path in enumerate(paths):
        if not os.path.exists(path):
            errors.append(f"rank {r}: no result ({'killed after timeout' if r in hung else f'exit code {procs[r].exitcode}'})")
            results.append(None)
            continue
        with open(path, "rb") as f:
            status, value = pickle.load(f)
        (results if status == "ok" else errors).append(value)
    if hung:
        errors.insert(0, f"ranks {hung} still running after {timeout_s:.0f}s (hang?)")
    if errors:
        raise RuntimeError("\n".join(str(e) for e in errors))
    return results


# --------------------------------------------------------------------------- the tiny step
TEXT_LEN = 8


def tiny_args():
    from moviegen.models.transformer import ModelArgs
    return ModelArgs(dim=64, n_layers=2, n_heads=4, ffn_dim=128, max_t=8, max_h=16,
                     max_w=16, text_dims={"byt5": 32}, time_freq_dim=64)


def reference_state(args, seed: int = 0) -> dict:
    """Initial weights with the zero-initialised gates / final layer perturbed, so every
    parameter gets a non-trivial gradient."""
    from moviegen.models.transformer import build_model
    torch.manual_seed(seed)
    model = build_model(args, "cpu")
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if (name.endswith("to_modulation.weight") or name.startswith("final_layer.proj")
                    or name.endswith(".modulation")):
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def make_batch(kind: str, batch: int, seed: int):
    """(x_t, t, target, embeds, masks) for a fixed global batch.

    kind "video": latent [16, 4, 8, 12] (grid 4 x 4 x 6 = 96 tokens, not square);
    kind "image": latent [16, 1, 8, 12] (one frame, 24 tokens).
    Text masks: all real, padded, fully dropped (caption dropout), padded.
    """
    from moviegen.flow import interpolate, sample_t, target_velocity
    g = torch.Generator().manual_seed(seed)
    T = 4 if kind == "video" else 1
    x1 = torch.randn(batch, 16, T, 8, 12, generator=g)
    x0 = torch.randn(x1.shape, generator=g)
    t = sample_t(batch, generator=g)
    embeds = {"byt5": torch.randn(batch, TEXT_LEN, 32, generator=g)}
    lengths = [TEXT_LEN, 5, 0, 3]
    mask = torch.zeros(batch, TEXT_LEN, dtype=torch.bool)
    for i in range(batch):
        mask[i, :lengths[i % 4]] = True
    return (interpolate(x0, x1, t, 1e-5), t, target_velocity(x0, x1, 1e-5), embeds,
            {"byt5": mask})


def _slice_batch(inputs, start, n):
    x_t, t, target, embeds, masks = inputs
    sl = slice(start, start + n)
    return (x_t[sl], t[sl], target[sl], {k: v[sl] for k, v in embeds.items()},
            {k: v[sl] for k, v in masks.items()})


def loss_of(model, inputs):
    from moviegen.flow import flow_matching_loss
    x_t, t, target, embeds, masks = inputs
    sum_sq, count = flow_matching_loss(model(x_t, t, embeds, masks), target)
    return sum_sq / count


STEPS = (("video", 4, 11), ("image", 4, 12), ("video", 4, 13))
LR = 1e-2  # AdamW, constant, in both runs


def run_reference(args, state):
    """Losses, gradients (per step) and final parameters of the one-process run."""
    from moviegen.models.transformer import MovieGenTransformer
    with torch.device("meta"):
        model = MovieGenTransformer(args)
    model.to_empty(device="cpu")
    model.load_state_dict(state)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    losses, grads = [], []
    for kind, batch, seed in STEPS:
        loss = loss_of(model, make_batch(kind, batch, seed))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        losses.append((loss.item(), norm.item()))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses, grads, {n: p.detach().clone() for n, p in model.named_parameters()}


def sharded_copy(args, state: dict, parallel_cfg):
    """The model of ``args`` built on the meta device, parallelized with ``parallel_cfg`` on
    this process group (CPU), holding the whole-tensor ``state``: (model, par, dims)."""
    from moviegen.models.transformer import MovieGenTransformer
    from moviegen.parallel.parallel_dims import ParallelDims
    from moviegen.parallel.parallelize import parallelize
    from moviegen.parallel.state import load_full_state_dict

    dims = ParallelDims.from_config(parallel_cfg, torch.distributed.get_world_size())
    mesh = dims.build_mesh("cpu")
    with torch.device("meta"):
        model = MovieGenTransformer(args)
    par = parallelize(model, dims, mesh, parallel_cfg, device_type="cpu")
    model.to_empty(device="cpu")
    load_full_state_dict(model, state)
    return model, par, dims


def run_parallel(args, state, layout: dict, ac: str = "none"):
    from torch.distributed.tensor import DTensor

    from moviegen.config import ParallelConfig
    from moviegen.parallel.parallelize import clip_grad_norm_
    from moviegen.parallel.state import canonical_name
    from moviegen.training.distributed import mean_over_dp
    from moviegen.parallel.tensor_parallel import finish_sequence_parallel_grads

    cfg = ParallelConfig(dp_replicate=layout.get("dp_replicate", 1),
                         dp_shard=layout.get("dp_shard", 1), cp=layout.get("cp", 1),
                         tp=layout.get("tp", 1), ac=ac, param_dtype="fp32")
    model, par, dims = sharded_copy(args, state, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    dp_rank, dp = par.mesh["dp"].get_local_rank(), dims.dp
    losses, grads = [], []
    for kind, batch, seed in STEPS:
        inputs = make_batch(kind, batch, seed)
        local = _slice_batch(inputs, dp_rank * (batch // dp), batch // dp)
        loss = loss_of(model, local)
        loss.backward()
        finish_sequence_parallel_grads(model)
        norm = clip_grad_norm_(list(model.parameters()), 1.0)
        losses.append((mean_over_dp(loss, par.mesh).item(), norm.item()))
        grads.append({canonical_name(n): (p.grad.full_tensor() if isinstance(p.grad, DTensor)
                                          else p.grad).clone()
                      for n, p in model.named_parameters()})
        opt.step()
        opt.zero_grad(set_to_none=True)
    params = {canonical_name(n): (p.full_tensor() if isinstance(p, DTensor) else p).detach()
              for n, p in model.named_parameters()}
    return losses, grads, params


def compare(ref, got, what: str) -> list[str]:
    """Human-readable mismatches (empty when equal)."""
    problems = []
    (ref_losses, ref_grads, ref_params), (losses, grads, params) = ref, got
    for i, ((rl, rn), (l, n)) in enumerate(zip(ref_losses, losses)):
        if not math.isclose(rl, l, rel_tol=1e-5):
            problems.append(f"{what} step {i}: loss {l!r} != reference {rl!r}")
        if not math.isclose(rn, n, rel_tol=2e-5):
            problems.append(f"{what} step {i}: grad norm {n!r} != reference {rn!r}")
    for i, (rg, g) in enumerate(zip(ref_grads, grads)):
        if set(rg) != set(g):
            problems.append(f"{what}: parameter names differ: {sorted(set(rg) ^ set(g))[:4]}")
            continue
        for name, r in rg.items():
            if r.abs().max() == 0:
                problems.append(f"{what} step {i}: reference gradient of {name} is all zero")
            if not torch.allclose(g[name], r, rtol=1e-4, atol=1e-4 * float(r.abs().max()) + 1e-9):
                err = float((g[name] - r).abs().max())
                problems.append(f"{what} step {i}: grad {name} differs (max abs err {err:.3g}, "
                                f"max ref {float(r.abs().max()):.3g})")
    problems += adamw_param_problems(params, ref_params, lr_sum=LR * len(STEPS), what=what,
                                     grads=grads, ref_grads=ref_grads, lr=LR)
    return problems


def adamw_param_problems(got: dict, ref: dict, lr_sum: float, what: str,
                         grads: list[dict] | None = None, ref_grads: list[dict] | None = None,
                         lr: float | None = None, max_fraction: float = 0.01) -> list[str]:
    """Parameters after a few AdamW steps on one layout vs one process.

    Why not one allclose: AdamW's update is lr * m / (sqrt(v) + eps), normalised by the
    gradient's own size, so a gradient's *relative* error becomes an error of the step. The
    gradients of two layouts differ by fp32 summation order (other shards, another
    reduction tree): a tiny absolute error, but for an element whose gradient is small
    (cancellation leaves 1e-6 where the tensor's largest is 1e-3) that is a relative error
    of 1e-3 or more, and that element's parameter moves differently by lr times it. So:

    * with the per-step gradients of both runs (``grads``, ``ref_grads``, constant ``lr``):
      each element within rtol 1e-4 / atol 1e-5 plus what its own gradient differences
      explain, 2 * lr * sum over steps k, and steps s <= k, of
      sqrt(k) * |dg_s| / (|g_s| + eps) (sqrt(v_hat) >= |g_s| / sqrt(k); m_hat and v_hat
      each carry at most all of dg_s); the gradients themselves are compared separately;
    * without them (a run through the public command): every element within
      3 x ``lr_sum`` (more than AdamW can move two copies apart in these steps) and at most
      ``max_fraction`` of a tensor's elements beyond rtol 1e-4 / atol 1e-5.

    A wrong shard, a missing reduction or a wrong learning rate moves elements with real
    gradients by far more than either allowance."""
    eps = 1e-8
    problems = []
    for name, r in ref.items():
        g = got[name]
        diff = (g - r).abs()
        base = 1e-5 + 1e-4 * r.abs()
        if grads is not None and ref_grads is not None and lr is not None:
            explained = torch.zeros_like(r)
            per_step = torch.zeros_like(r)
            for k, (gs, rs) in enumerate(zip(grads, ref_grads), 1):
                per_step += (gs[name] - rs[name]).abs() / (rs[name].abs() + eps)
                explained += 2 * lr * k ** 0.5 * per_step
            bad = int((diff > base + explained).sum())
            ok = bad == 0
            detail = f"{bad} elements beyond what their gradient differences explain"
        else:
            loose = int((diff > base).sum())
            allowed = max(1, int(max_fraction * r.numel()))
            ok = loose <= allowed
            detail = (f"{loose} of {r.numel()} elements beyond rtol 1e-4/atol 1e-5, "
                      f"{allowed} allowed")
        if float(diff.max()) > 3 * lr_sum or not ok:
            problems.append(f"{what}: parameter {name} after the steps differs (max err "
                            f"{float(diff.max()):.3g}, {detail})")
    return problems


def check_layouts(rank: int, world_size: int, layouts: list[dict]) -> dict:
    """Spawn target: every layout of this world size in one process group."""
    import torch.distributed as dist
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        args = tiny_args()
        state = reference_state(args)
        ref = run_reference(args, state)
        report = {}
        for layout in layouts:
            name = " x ".join(f"{k} {v}" for k, v in layout.items() if k != "ac")
            got = run_parallel(args, state, {k: v for k, v in layout.items() if k != "ac"},
                               ac=layout.get("ac", "none"))
            report[name + (f" (ac {layout['ac']})" if "ac" in layout else "")] = {
                "problems": compare(ref, got, name), "losses": got[0]}
        return report
    finally:
        dist.destroy_process_group()
