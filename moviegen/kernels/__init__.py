"""Triton kernels, each with a plain torch reference and an autograd Function.

Use the dispatching entry points below (``backend`` = the model's ``kernels`` setting:
auto | triton | torch). Importing this package never imports triton; the Triton modules
(``kernels.modulation``, ``kernels.pos_embed``, ``kernels.flash_attention``) load lazily.
"""
from .dispatch import (BACKENDS, add_factorized_pos_embed, attention, gated_residual,
                       modulated_rms_norm, resolve_backend, triton_available)

__all__ = ["BACKENDS", "add_factorized_pos_embed", "attention", "gated_residual",
           "modulated_rms_norm", "resolve_backend", "triton_available"]
