"""The GPUs the static model estimates for, and the rates it assumes (docs/performance.md).

Rates are what a well-written kernel measures, not the data sheet: H100 SXM ~3.0 TB/s HBM copy
(3.35 spec), ~790 TFLOP/s dense bf16/fp16 (989 spec), ~400 TF32 (495 spec), ~60 TFLOP/s fp32 FMA
(67 spec). The A100 SXM 80 GB numbers take the same fractions of its data sheet (2.04 TB/s,
312 TFLOP/s bf16, 156 TF32, 19.5 fp32): 1.8 TB/s, 250, 125, 17.5. L2 bandwidth (what re-reads
of data shared between CTAs cost) and the DRAM/L2 latencies under load are round figures from
public microbenchmarks of these chips; the launch overhead is the gap between two dependent
kernels in one stream. Every number the model derives from these is an estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

from vqvae_fast.kernels._table import ARCHS, Arch


@dataclass(frozen=True)
class Gpu:
    name: str
    arch: Arch  # occupancy limits (kernels/_table.ARCHS)
    sms: int
    bandwidth: float  # HBM bytes/s
    l2_bandwidth: float  # bytes/s from L2 to the SMs, all SMs together
    l2_size: int  # bytes
    tensor: dict  # operand dtype -> dense FLOP/s on tensor cores
    fma: float  # fp32 FLOP/s on the CUDA cores (2 per FFMA)
    dram_latency: float  # seconds, a load that misses L2, under load
    l2_latency: float  # seconds, a load that hits L2
    launch_overhead: float  # seconds between two dependent kernels
    clock: float  # SM clock, Hz (turns per-SM instruction counts into time)

    @property
    def key(self) -> str:
        return self.arch.name

    def tensor_rate(self, operand: str) -> float:
        return self.tensor[operand]


H100 = Gpu(
    name="H100 SXM", arch=ARCHS["sm_90a"], sms=132, bandwidth=3.0e12, l2_bandwidth=7.0e12, l2_size=50 * 2**20,
    tensor={"bf16": 790e12, "fp16": 790e12, "tf32": 400e12}, fma=60e12,
    dram_latency=800e-9, l2_latency=300e-9, launch_overhead=2.0e-6, clock=1.755e9,
)
A100 = Gpu(
    name="A100 SXM", arch=ARCHS["sm_80"], sms=108, bandwidth=1.8e12, l2_bandwidth=4.5e12, l2_size=40 * 2**20,
    tensor={"bf16": 250e12, "fp16": 250e12, "tf32": 125e12}, fma=17.5e12,
    dram_latency=750e-9, l2_latency=300e-9, launch_overhead=2.0e-6, clock=1.41e9,
)
GPUS = {"sm_90a": H100, "sm_80": A100}
