"""Scale-out with ``torchrun``: which rank does which inputs, and the few collectives the job needs.

Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment, single node or
``--nnodes N`` from SLURM) the job joins the process group (NCCL when it runs on CUDA, gloo on
CPU); a caller that already initialised ``torch.distributed`` keeps its group. Without them it
is a world of one. Inputs are split into contiguous blocks by ``(rank, world_size)`` over the
one input list that rank 0 discovered and broadcast, so the split is the same on every rank
even if the folder changes while the job starts.

Errors that one rank detects before the work starts (a bad input path, a refused header, a
model that does not load) are shared, so every rank raises the same error instead of waiting
forever at the next collective.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 4 * 3600  # the final barrier waits for the slowest rank


class RankError(RuntimeError):
    """An error raised on one rank, re-raised on all of them."""


def partition(count: int, rank: int, world_size: int) -> range:
    """Contiguous block ``rank`` of ``world_size`` blocks of ``range(count)`` (sizes differ by <= 1)."""
    return range(count * rank // world_size, count * (rank + 1) // world_size)


def default_device(local_rank: int) -> torch.device:
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we initialised the process group and destroy it at the end

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, device: str | torch.device | None = None,
                         timeout_s: float = DEFAULT_TIMEOUT_S) -> "Context":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        dev = torch.device(device) if device is not None else default_device(local_rank)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local_rank)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"device {str(dev)!r} was asked for but torch sees no CUDA device")
            torch.cuda.set_device(dev)
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), local_rank, dev, False)
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        if world_size <= 1:
            return cls(0, 1, 0, dev, False)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, dev, True)

    # -- collectives (no-ops in a world of one)
    def barrier(self) -> None:
        if not self.distributed:
            return
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        out = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def on_rank0(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 and give its result (or its error) to every rank."""
        result, error = None, None
        if self.rank == 0:
            try:
                result = fn()
            except Exception as err:  # noqa: BLE001 - re-raised below, on every rank
                if not self.distributed:
                    raise
                error = (type(err).__name__, str(err))
        result, error = self.broadcast((result, error))
        if error is not None:
            raise (ValueError if error[0] == "ValueError" else RankError)(f"rank 0: {error[1]}")
        return result

    def on_every_rank(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` everywhere; if it fails on any rank, raise on all of them."""
        result, error = None, None
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - shared below
            if not self.distributed:
                raise
            error = f"rank {self.rank}: {type(err).__name__}: {err}"
        errors = [e for e in self.gather(error) if e]
        if errors:
            raise RankError("; ".join(errors))
        return result

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
