import os
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
for path in (ROOT, TESTS):  # the packages, and the shared test helpers (dist_helpers, ...)
    if path not in sys.path:
        sys.path.insert(0, path)
# Tiny models on 2 cores: more intra-op threads than cores only adds contention.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Triton runs on the CPU only through its interpreter; on a GPU machine export
# TRITON_INTERPRET=0 before pytest to run the kernels for real.
os.environ.setdefault("TRITON_INTERPRET", "1")
