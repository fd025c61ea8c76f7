"""``triton.autotune`` whose tuner drops a config that fails to build, whatever the error.

Triton's tuner skips only OutOfResources, CompileTimeAssertionFailure and PTXASError; any
other compile error (e.g. Triton 3.6 rejecting a warp-specialised loop for sm_90 with
"unsupported op type") would escape the tuning and fail the call. Here each failing config
is timed as infinitely slow, with one warning naming it, and the others still compete;
only when every config fails does the error reach the caller (who falls back).
"""
from __future__ import annotations

import warnings

import triton


def autotune(configs, key, **kwargs):
    def decorate(fn):
        tuner = triton.autotune(configs=configs, key=key, **kwargs)(fn)
        if hasattr(tuner, "_bench"):
            original = tuner._bench
            failed: set[str] = set()

            def bench(*args, config, **meta):
                try:
                    return original(*args, config=config, **meta)
                except Exception as e:  # noqa: BLE001: any build error drops just this config
                    name = f"{getattr(fn, '__name__', fn)} {config}"
                    if name not in failed:
                        failed.add(name)
                        warnings.warn(f"autotune: dropping config {name}: {type(e).__name__}: "
                                      f"{str(e).splitlines()[0] if str(e) else ''}")
                    return [float("inf")] * 3

            tuner._bench = bench
        return tuner
    return decorate
