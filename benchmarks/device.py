"""The device under test: its name, the software versions, and its two ceilings measured once.

Ceilings (METHOD: measure them on the device rather than trusting a datasheet):
* bandwidth: a large device-to-device copy, counting bytes read plus bytes written;
* FLOP rate: a large matrix product per dtype, on random data (never zeros), with the
  current TF32 settings; each the fastest of several runs; ``tf32`` is measured separately on CUDA (fp32 with TF32 allowed), since
  cuDNN convolutions use TF32 for fp32 by default while matrix products do not.

Sizes: 2 x 512 MiB copy and 8192³ products on CUDA; 2 x 64 MiB and 1024³ (512³ for half
types) on CPU, so that the CPU measurement takes about a second.
"""

from __future__ import annotations

import contextlib
import platform
import time

import torch

from .timing import synchronize

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict:
    """Device name and versions (torch, triton, CUDA, cuDNN, vqvae_fast, python, numpy)."""
    from vqvae_fast import _backend, _extension
    from vqvae_fast._version import __version__

    try:
        import numpy

        numpy_version = numpy.__version__
    except ImportError:
        numpy_version = None
    env = {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": _backend.triton_version() or "n/a",
        "cuda": torch.version.cuda or "n/a",
        "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "n/a",
        "vqvae_fast": __version__,
        "extension": "loaded" if _extension.status() is None else f"not loaded: {_extension.status()}",
        "python": platform.python_version(),
        "numpy": numpy_version or "n/a",
        "host": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            capability=f"{props.major}.{props.minor}",
            sms=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            l2_mib=round(getattr(props, "L2_cache_size", 0) / 2**20, 1),
        )
    return env


def _best_seconds(fn, device: torch.device, reps: int, warmup: int = 2) -> float:
    """The fastest of ``reps`` runs: a ceiling is what the device can do, not what it usually does."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e-3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return min(times)


def measure_bandwidth(device: torch.device) -> float:
    """Bytes/s of a large device copy, counting bytes read plus bytes written."""
    nbytes = 512 * 2**20 if device.type == "cuda" else 64 * 2**20
    src = torch.randint(0, 2**31 - 1, (nbytes // 4,), dtype=torch.int32, device=device)
    dst = torch.empty_like(src)
    seconds = _best_seconds(lambda: dst.copy_(src), device, reps=20 if device.type == "cuda" else 10)
    return 2 * nbytes / seconds


@contextlib.contextmanager
def _tf32(enabled: bool):
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def measure_flop_rate(device: torch.device, dtype: str) -> float:
    """FLOP/s of a large matrix product in ``dtype`` (``tf32``: fp32 with TF32 allowed)."""
    torch_dtype = TORCH_DTYPES["fp32" if dtype == "tf32" else dtype]
    if device.type == "cuda":
        n = 8192
    else:
        n = 1024 if torch_dtype in (torch.float32, torch.float64) else 512
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch_dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=torch_dtype, generator=gen)
    out = torch.empty(n, n, device=device, dtype=torch_dtype)
    tf32 = _tf32(True) if dtype == "tf32" else contextlib.nullcontext()
    with tf32:
        seconds = _best_seconds(lambda: torch.mm(a, b, out=out), device, reps=10)
    return 2 * n**3 / seconds


class Peaks:
    """The device's ceilings, each measured on first use and then remembered.

    A measurement that fails (say, a dtype without a matrix product on this device) is remembered
    as ``None``: the rows that need it get no floor, and the failure goes to ``errors``.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._bandwidth: float | None = None
        self._flops: dict[str, float | None] = {}
        self.errors: dict[str, str] = {}

    @property
    def bandwidth(self) -> float | None:
        if self._bandwidth is None and "bandwidth" not in self.errors:
            self._bandwidth = self._measure("bandwidth", lambda: measure_bandwidth(self.device))
        return self._bandwidth

    def flop_rate(self, dtype: str) -> float | None:
        if self.device.type != "cuda" and dtype == "tf32":
            dtype = "fp32"
        if dtype not in self._flops:
            self._flops[dtype] = self._measure(dtype, lambda: measure_flop_rate(self.device, dtype))
        return self._flops[dtype]

    def _measure(self, name: str, fn) -> float | None:
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - no ceiling means no floor, not a failed run
            self.errors[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
            return None

    def as_dict(self) -> dict:
        return {
            "bandwidth_gbps": None if self._bandwidth is None else self._bandwidth / 1e9,
            "tflops": {k: v / 1e12 for k, v in sorted(self._flops.items()) if v is not None},
            "errors": dict(self.errors),
        }
