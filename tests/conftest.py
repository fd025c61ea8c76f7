import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
# Tiny models on 2 cores: more intra-op threads than cores only adds contention.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Triton runs on the CPU only through its interpreter; on a GPU machine export
# TRITON_INTERPRET=0 before pytest to run the kernels for real.
os.environ.setdefault("TRITON_INTERPRET", "1")
