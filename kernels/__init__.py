"""Triton kernels, each with a plain torch reference and an autograd Function."""
