"""Distributed helpers, the one home of them: where a process stands under ``torchrun`` (:class:`Parallel`, used
by training and auditing), joining and leaving the process group, and for sharded audits which rows this
process audits and the one gather that brings them to rank 0.

Under ``torchrun`` every rank loads the same model and data, audits a contiguous
block of whole :data:`attacks.CHUNK`-sample chunks (stochastic attacks run over a
fixed grid of such chunks keyed by global index, so a shard made of whole chunks
computes exactly its rows of the single-process result), and sends its per-sample
tables to rank 0, which aggregates once over all rows, evaluates the gates and
writes the outputs. Without torchrun this is a world of one and nothing is sent.

A row table is ``{group: {name: array}}`` where every array of a group has one
entry per row along its first axis; groups are concatenated over chunks and
ranks in global row order, whatever names the stages put in them.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from attacks import CHUNK
from detectors.errors import BadInputError

RowTable = dict[str, dict[str, np.ndarray]]


@dataclass(frozen=True)
class Parallel:
    """Where this process stands under torchrun (a world of one without it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @classmethod
    def from_environment(cls):
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(rank=int(os.environ.get("RANK", "0")), world=world,
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")))

    def share_cpu(self) -> int:
        """On CPU, give this process its share of the cores: torch threads = cores / processes on this machine
        (never more than it has now). Several processes each running one thread per core fight over the cores:
        measured on 2 cores, a 2-process audit with 2 threads each took 63.7 s, with 1 thread each 33.3 s."""
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if local > 1:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            torch.set_num_threads(max(1, min(torch.get_num_threads(), cores // local)))
        return torch.get_num_threads()

    def device(self, device: torch.device) -> torch.device:
        """This process's device: on CUDA the GPU of its local rank (made current), else ``device``."""
        if self.distributed and device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def start(self, device: torch.device) -> None:
        """Join the process group: NCCL for CUDA, gloo on CPU (with this process's share of the cores)."""
        if self.distributed and device.type == "cpu":
            self.share_cpu()
        if self.distributed and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                    timeout=datetime.timedelta(hours=2))

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def share(self, value):
        """Rank 0's ``value`` (anything that pickles), on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


@dataclass(frozen=True)
class Shard(Parallel):
    """A process of a sharded audit: a :class:`Parallel` that knows which rows it audits."""

    def rows(self, n: int) -> np.ndarray:
        """This rank's global row indices: a contiguous run of whole chunks (possibly empty)."""
        chunks = (n + CHUNK - 1) // CHUNK
        first = chunks * self.rank // self.world
        last = chunks * (self.rank + 1) // self.world
        return np.arange(min(n, first * CHUNK), min(n, last * CHUNK))

    def agree(self, problem: Exception | None) -> None:
        """Raise on every rank when any rank failed (so none waits forever on the others)."""
        if not self.distributed:
            if problem is not None:
                raise problem
            return
        found: list = [None] * self.world
        dist.all_gather_object(found, None if problem is None else _portable(problem))
        if problem is not None:
            raise problem
        failed = next((p for p in found if p is not None), None)
        if failed is not None:
            raise failed

    def gather(self, local: RowTable | Exception) -> RowTable | None:
        """Every rank's row table (or its failure) to rank 0, merged in global row order; None elsewhere."""
        if not self.distributed:
            if isinstance(local, Exception):
                raise local
            return local
        parts: list | None = [None] * self.world if self.is_main else None
        dist.gather_object(local if not isinstance(local, Exception) else _portable(local), parts, dst=0)
        if isinstance(local, Exception):
            raise local
        if not self.is_main:
            return None
        failed = next((p for p in parts if isinstance(p, Exception)), None)
        if failed is not None:
            raise failed
        return concatenate(parts)

    def broadcast_code(self, code: int) -> int:
        """Rank 0's exit code, on every rank."""
        if not self.distributed or not dist.is_initialized():
            return code
        box = [code]
        dist.broadcast_object_list(box, src=0)
        return int(box[0])


def _portable(problem: Exception) -> Exception:
    """An exception that pickles: bad input keeps its type, anything else becomes a RuntimeError."""
    if isinstance(problem, BadInputError):
        return BadInputError(str(problem))
    return RuntimeError(f"{type(problem).__name__}: {problem}")


def concatenate(parts: list[RowTable]) -> RowTable:
    """Row tables joined group by group, name by name, in the order given."""
    merged: RowTable = {}
    for part in parts:
        for group, table in part.items():
            for name, values in table.items():
                merged.setdefault(group, {}).setdefault(name, []).append(values)
    return {group: {name: np.concatenate(values) for name, values in table.items()}
            for group, table in merged.items()}
