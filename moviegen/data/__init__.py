"""Video/image data: synthetic dataset, manifest, Movie Gen bucketing, DALI/PyAV loader.

Entry points: ``python -m moviegen.data.synthetic`` (make a dataset),
``python -m moviegen.data.prepare`` (probe files into a manifest), and
:func:`build_video_loader` (what the trainer iterates).
"""
from moviegen.data.buckets import Bucket, bucket_latent_shapes, make_buckets
from moviegen.config.video import VideoDataConfig, moviegen_256px, moviegen_768px
from moviegen.data.loader import VideoLoader, build_video_loader
from moviegen.data.manifest import Manifest, ManifestError, load_manifest

__all__ = ["Bucket", "Manifest", "ManifestError", "VideoDataConfig", "VideoLoader",
           "bucket_latent_shapes", "build_video_loader", "load_manifest", "make_buckets",
           "moviegen_256px", "moviegen_768px"]
