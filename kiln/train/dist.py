"""torch.distributed plumbing: the process group from torchrun's environment, and small collectives.

kiln never launches processes itself: ``torchrun --nproc_per_node=N -m kiln train RECIPE`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT`` (the env:// rendezvous of
``torch.distributed.init_process_group``). :func:`init_from_env` joins that group with NCCL when training on
CUDA (one device per ``LOCAL_RANK``) and gloo on CPU. Without torchrun, a run is a single process and every
helper here is a no-op, except that FSDP2 needs a process group even alone: :func:`ensure_process_group`
makes a one-rank group on an in-memory store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

TIMEOUT_ENV = "KILN_DIST_TIMEOUT_MIN"  # how long ranks wait for rank 0 (e.g. while it builds the tokens), minutes


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when a process group is up (torchrun, or a one-rank group made for FSDP2)."""
        return dist.is_available() and dist.is_initialized()


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def current() -> DistEnv:
    """The environment of the running process group, or the single-process default."""
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistEnv()


def _timeout() -> timedelta:
    return timedelta(minutes=float(os.environ.get(TIMEOUT_ENV, "60")))


def init_from_env(use_cuda: bool) -> DistEnv:
    """Join torchrun's process group (NCCL with one GPU per LOCAL_RANK if ``use_cuda``, else gloo).

    Idempotent; a single process without torchrun gets the default :class:`DistEnv` and no group.
    """
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return current()
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", timeout=_timeout(), device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group("gloo", timeout=_timeout())
    if dist.get_rank() != 0:
        os.environ["KILN_QUIET"] = "1"  # one voice: rank 0 logs and draws progress bars
    return current()


def ensure_process_group(use_cuda: bool) -> DistEnv:
    """A process group for FSDP2: torchrun's if launched so, else a one-rank group on a HashStore."""
    env = init_from_env(use_cuda)
    if not env.active:
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=_timeout())
        env = current()
    return env


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled); identity without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (pickled); ``[obj]`` without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks in float64 (exact for counts below 2**53); identity without a group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()
