"""moviegen: one distribution, three packages (moviegen, parallel, kernels).

torch is deliberately *not* in install_requires: an unpinned ``torch`` requirement makes
pip pull a multi-GB CUDA build on a CPU machine, and on a cluster container it could
replace the torch the container was built around. ``scripts/quickstart.sh`` installs
``torch==2.13.0`` only when no torch is importable.
"""
from setuptools import find_packages, setup

setup(
    name="moviegen",
    version="0.1.0",
    description="Movie Gen-style text-to-video flow-matching transformer training",
    python_requires=">=3.10",
    packages=find_packages(include=["moviegen", "moviegen.*", "parallel", "parallel.*",
                                    "kernels", "kernels.*"]),
    package_data={"moviegen": ["py.typed"]},
    install_requires=[
        "numpy",
        "pyyaml",
        "safetensors",
        "transformers>=4.40",
        "tqdm",
        "matplotlib",
        "tensorboard",
        "pillow",
    ],
    extras_require={
        # real video files: PyAV encodes/decodes, DALI decodes on CPU (VP9/VP8/MJPEG) or GPU;
        # pyarrow: the Parquet copy that makes a large manifest load fast
        "data": ["av", "nvidia-dali-cuda120", "pyarrow"],
        # tests: triton runs on CPU through TRITON_INTERPRET=1
        "dev": ["pytest", "pytest-timeout", "triton>=3.0"],
        "gpu": ["triton>=3.0"],
    },
)
