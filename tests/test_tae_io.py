"""video_io: playable .mp4/.webm (PyAV opens them and counts the frames), GIF previews, reading."""
import pytest
import torch
from PIL import Image

from data_helpers import probe_video
from moviegen.models.tae import psnr
from moviegen.data.video_io import read_video, write_gif, write_video


def _moving_square(T=9, H=32, W=48) -> torch.Tensor:
    video = torch.full((3, T, H, W), -0.6)
    for t in range(T):
        video[:, t, 8:20, 2 + 3 * t:14 + 3 * t] = torch.tensor([0.9, -0.2, 0.4]).view(3, 1, 1)
    return video


@pytest.mark.parametrize("ext,codec", [("mp4", "h264"), ("webm", "vp9")])
def test_write_video_is_playable(tmp_path, ext, codec):
    video = _moving_square()
    path = write_video(str(tmp_path / f"clip.{ext}"), video, fps=12)
    info = probe_video(path)
    assert info["frames"] == 9 and (info["width"], info["height"]) == (48, 32)
    assert info["codec"] == codec or ext == "mp4"  # mpeg4 when this FFmpeg lacks libx264
    back = read_video(path)
    assert back.shape == video.shape and back.min() >= -1 and back.max() <= 1
    assert psnr(back, video) > 28
    assert torch.equal(read_video(path, num_frames=3, start=4), back[:, 4:7])


def test_read_video_gives_the_training_loaders_pixels():
    """One real VP9 file of the synthetic set (saturated shapes: the chroma edges where
    swscale's default conversion differs) read by read_video (held-out PSNR, sampling
    inputs) and by the training decode path: the same uint8 frames."""
    import numpy as np

    from data_helpers import synthetic_dataset
    from moviegen.data.decode import decode_video_pyav
    from moviegen.data.manifest import load_manifest
    from moviegen.data.video_io import to_uint8_frames

    m = load_manifest(synthetic_dataset())
    row = int(np.flatnonzero(~m.is_image)[0])
    path, n = m.resolve(row), int(m.frames[row])
    training = decode_video_pyav(path, np.arange(n))
    read = to_uint8_frames(read_video(path))
    assert read.shape == training.shape and n >= 8
    assert np.array_equal(read, training)
    assert np.array_equal(to_uint8_frames(read_video(path, num_frames=3, start=2)),
                          training[2:5])


def test_odd_sizes_are_padded_for_yuv420(tmp_path):
    path = write_video(str(tmp_path / "odd.mp4"), _moving_square(T=3, H=31, W=45))
    assert probe_video(path)["frames"] == 3


def test_write_gif(tmp_path):
    path = write_gif(str(tmp_path / "preview.gif"), _moving_square(), fps=10)
    with Image.open(path) as im:
        assert im.n_frames == 9 and im.size == (48, 32)
        assert im.info["duration"] == 100


def test_bad_input_shape(tmp_path):
    with pytest.raises(ValueError, match=r"\[3, T, H, W\]"):
        write_video(str(tmp_path / "x.mp4"), torch.zeros(1, 3, 4, 8, 8))
    with pytest.raises(ValueError, match="extension"):
        write_video(str(tmp_path / "x.xyz"), torch.zeros(3, 2, 8, 8))
