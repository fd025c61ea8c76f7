"""Sampling: from noise (and given frames) to latents, and the tasks that read and write
pixels.

solver.py   the flow-matching ODE solve on latents: classifier-free text guidance, given
            frames (explicit, replacement, reconstruction guidance), sliding windows,
            extension; ``Sampler`` and ``sample_latents`` (text-to-video)
tasks.py    the conditioned tasks from files (``python -m moviegen.sample``): t2v, i2v,
            extend, interpolate, upsample; the TAE in and out; ``run_request``
"""
