"""Decoding: DALI against PyAV, the shared resize/crop maths, and broken files."""
import importlib.util
from itertools import islice

import numpy as np
import pytest
import torch

from moviegen.data import build_video_loader
from moviegen.data.decode import (DALI_CPU_CODECS, decode_video_pyav, resize_crop_normalize)
from moviegen.data.manifest import load_manifest
from data_helpers import broken_dataset, synthetic_dataset, tiny_config

HAS_DALI = importlib.util.find_spec("nvidia.dali") is not None
needs_dali = pytest.mark.skipif(not HAS_DALI, reason="nvidia-dali not installed")


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(peak ** 2 / mse)


def _dali_raw_frames(path: str, frames) -> np.ndarray:
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, exec_pipelined=False,
                  exec_async=False, prefetch_queue_depth=1)
    def raw():
        enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
        return fn.decoders.video(enc, device="cpu", frames=list(frames))

    pipe = raw()
    pipe.build()
    pipe.feed_input("enc", [np.fromfile(path, np.uint8)])
    out = np.array(pipe.run()[0].as_tensor())[0]
    del pipe
    return out


@needs_dali
def test_dali_raw_frames_match_pyav():
    m = load_manifest(synthetic_dataset())
    for row in np.flatnonzero(~m.is_image)[:3]:
        idx = [0, 3, int(m.frames[row]) - 1]
        ours = decode_video_pyav(m.resolve(row), np.asarray(idx))
        theirs = _dali_raw_frames(m.resolve(row), idx)
        assert ours.shape == theirs.shape
        assert psnr(torch.from_numpy(ours), torch.from_numpy(theirs), 255.0) > 40
        assert np.array_equal(ours, theirs)   # same swscale flags: bit-exact


@needs_dali
@pytest.mark.parametrize("split", ["train", "val"])
def test_dali_loader_matches_pyav_loader(split):
    cfg = tiny_config(synthetic_dataset())
    outs = {}
    for backend in ("dali", "pyav"):
        ld = build_video_loader(cfg.replace(backend=backend), dp_rank=0, dp_size=1, seed=5,
                                split=split)
        assert ld.backend == backend
        outs[backend] = list(islice(ld, ld.batches_per_epoch()))
    worst = float("inf")
    for d, p in zip(outs["dali"], outs["pyav"]):
        assert d["bucket"] == p["bucket"] and d["paths"] == p["paths"]
        assert d["video"].shape == p["video"].shape
        worst = min(worst, psnr(d["video"], p["video"], 2.0))   # values span [-1, 1]
    assert worst > 40, worst


def test_resize_crop_normalize_reference():
    frames = np.random.default_rng(0).integers(0, 256, (2, 30, 40, 3), dtype=np.uint8)
    out = resize_crop_normalize(frames, (30, 40), (3, 5), (16, 24))   # no resize: crop only
    ref = torch.from_numpy(frames[:, 3:19, 5:29].astype(np.float32)).permute(3, 0, 1, 2)
    torch.testing.assert_close(out, ref / 127.5 - 1, rtol=0, atol=1e-6)
    up = resize_crop_normalize(frames, (60, 80), (0, 0), (60, 80))      # exact 2x upscale
    assert up.shape == (3, 2, 60, 80) and up.min() >= -1 and up.max() <= 1
    torch.testing.assert_close(up.mean(), out.new_tensor(frames.mean() / 127.5 - 1),
                               atol=0.02, rtol=0)


@pytest.mark.parametrize("backend", ["pyav"] + ["dali"] * HAS_DALI)
def test_broken_files_are_skipped_logged_and_counted(backend, caplog):
    """Broken files are skipped with their reason. The H.264 file is not broken: with DALI
    (whose CPU decoder has no H.264) it goes to the CPU decoder and is trained on; PyAV
    told to accept only DALI's CPU codecs skips it, naming the codec."""
    manifest, paths = broken_dataset()
    cfg = tiny_config(manifest, backend=backend, use_images=False)
    ld = build_video_loader(cfg, dp_rank=0, dp_size=1, seed=0,
                            codecs=list(DALI_CPU_CODECS) if backend == "pyav" else None)
    n = ld.batches_per_epoch()
    with caplog.at_level("WARNING", logger="moviegen.data.loader"):
        batches = list(islice(ld, n))   # fewer than n batches are yielded if one was all bad
    skipped = ld.skipped()
    broken = {k: p for k, p in paths.items() if backend == "pyav" or k != "wrong_codec"}
    assert set(skipped) == set(broken.values()), skipped
    for kind, path in broken.items():
        assert skipped[path], kind
        assert path in caplog.text
    assert "missing" in skipped[paths["missing"]] and "zero-byte" in skipped[paths["zero_byte"]]
    stats = ld.stats()
    assert stats["skipped_files"] == len(broken) and stats["seen_files"] >= 14 + 5
    good = {p for b in batches for p in b["paths"]}
    assert not good & set(broken.values())
    assert len(good) >= 12
    if backend == "pyav":
        assert "codec 'h264'" in skipped[paths["wrong_codec"]]
    else:
        assert paths["wrong_codec"] in good


def test_too_many_skips_raise():
    manifest, paths = broken_dataset()
    cfg = tiny_config(manifest, backend="pyav", use_images=False, max_skip_fraction=0.1,
                      skip_check_min_files=4)
    ld = build_video_loader(cfg, dp_rank=0, dp_size=1, seed=0, codecs=list(DALI_CPU_CODECS))
    with pytest.raises(RuntimeError, match="max_skip_fraction"):
        for _ in islice(ld, 3 * ld.batches_per_epoch()):
            pass


def test_decoded_clip_cache_gives_the_same_frames_and_decodes_each_file_once(monkeypatch):
    from moviegen.data import decode

    manifest = synthetic_dataset()
    m = load_manifest(manifest)
    row = int(np.flatnonzero(~m.is_image)[0])
    idx = np.array([0, 2, 5])
    plain = decode.decode_video_pyav(m.resolve(row), idx)
    calls = []
    real = decode._decode_all
    monkeypatch.setattr(decode, "_decode_all", lambda p: calls.append(p) or real(p))
    decode.set_clip_cache(64)
    try:
        first = decode.decode_video_pyav(m.resolve(row), idx)
        again = decode.decode_video_pyav(m.resolve(row), np.array([5, 0]))
    finally:
        decode.set_clip_cache(0)
    assert np.array_equal(first, plain) and np.array_equal(again, plain[[2, 0]])
    assert calls == [m.resolve(row)]
    cache = decode.ClipCache(1)  # 1 MiB: the oldest clip goes first
    a, b = np.zeros((4, 256, 256, 3), np.uint8), np.ones((4, 256, 256, 3), np.uint8)
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is None and cache.get("b") is b and cache.used == b.nbytes
