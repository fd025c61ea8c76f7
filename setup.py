"""moviegen: one distribution, one import namespace (``moviegen``).

Everything, the Triton kernels (``moviegen.kernels``) and the parallel plans
(``moviegen.parallel``) included, lives under ``moviegen``: a generic top-level name such
as ``kernels`` is owned by another distribution (Hugging Face's ``kernels``, which
transformers 5 requires) and would shadow it or be overwritten by it.

Ranges, not pins: lower bounds, and an upper bound only where a known break exists (with
its reason beside it). The exact versions the set-up installs are in
``requirements/lock-cpu-py311.txt`` (``bash scripts/lock.sh`` writes it).

torch is deliberately *not* in install_requires: an unpinned ``torch`` requirement makes
pip pull a multi-GB CUDA build on a CPU machine, and on a cluster container it could
replace the torch the container was built around. ``scripts/quickstart.sh`` installs
``torch==2.13.0`` only when the base interpreter has no torch.
"""
from setuptools import find_packages, setup

setup(
    name="moviegen",
    version="0.1.0",
    description="Movie Gen-style text-to-video flow-matching transformer training",
    python_requires=">=3.10",
    packages=find_packages(include=["moviegen", "moviegen.*"]),
    package_data={"moviegen": ["py.typed", "kernels/choices.json"]},
    install_requires=[
        "numpy>=1.24",
        "pyyaml>=6.0",
        "safetensors>=0.4",
        "transformers>=4.40",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "tensorboard>=2.14",
        "pillow>=10.0",
        # checkpoint file checksums (xxh3, streamed while or after writing)
        "xxhash>=3.0",
    ],
    extras_require={
        # real video files: PyAV encodes/decodes, DALI decodes on CPU (VP9/VP8/MJPEG) or GPU;
        # pyarrow: Parquet manifests; Ray Data: curation on one machine or a cluster;
        # fsspec + s3fs: object-storage inputs and outputs (s3://)
        "data": ["av>=12.0", "nvidia-dali-cuda120>=1.40", "pyarrow>=14.0",
                 "ray[data]>=2.40", "fsspec>=2024.6.0", "s3fs>=2024.6.0"],
        # float8 training (torchao's float8 linears; emulated on CPU)
        "float8": ["torchao>=0.12"],
        # tests: triton runs on CPU through TRITON_INTERPRET=1; moto's server is a local
        # S3-compatible endpoint for the object-storage tests
        "dev": ["pytest>=8.0", "pytest-timeout>=2.3", "triton>=3.0", "moto[server]>=5.0"],
        "gpu": ["triton>=3.0"],
    },
)
