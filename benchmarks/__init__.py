"""The benchmark suite of vqvae_fast; installed as ``vqvae_fast.benchmarks``."""
