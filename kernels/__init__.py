"""Triton kernels of vqvae_fast, one file per op; installed as ``vqvae_fast.kernels``.

Importing a kernel module imports triton. Nothing outside ``vqvae_fast.ops`` imports these
modules directly, and ``vqvae_fast.ops`` does so only when the triton backend is chosen.
"""
