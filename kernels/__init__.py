"""Triton kernels of vqvae_fast, installed as ``vqvae_fast.kernels``; per op three files:
``<op>_jit.py`` (the ``@triton.jit`` kernels), ``<op>_table.py`` (every configuration they can be
launched with) and ``<op>.py`` (launch planning: picks table entries, launches on the input's
device). ``_table.py`` holds the table format; see docs/architecture.md.

Importing a kernel module imports triton. The package imports nothing of vqvae_fast but
``vqvae_fast._device``; ``vqvae_fast.ops`` imports the kernels only when the triton backend is chosen.
"""
