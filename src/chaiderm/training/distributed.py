"""Data-parallel training across processes (``torchrun``): gloo on CPU, nccl on GPUs.

The triplet loss mines over the whole batch, so every process must see every embedding. Each process
draws the *same* global batch and augmentation (the generators are seeded alike), runs the network on its
own contiguous share of the batch's chunks, and gathers the others' outputs; its own rows are spliced back
with their autograd history, so each process computes the same global loss, and its backward pass reaches
only its own share. Summing the gradients over processes then gives exactly the gradient one process gets
from the whole batch (as pytorch-metric-learning's ``DistributedLossWrapper`` does). Shares end on chunk
boundaries, so each BatchNorm sees the same rows it would see in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist | None:
    """The process group torchrun describes in the environment (WORLD_SIZE > 1), or None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(d: Dist, device: str) -> str:
    """Join the process group; returns the device this process computes on (cuda:LOCAL_RANK on GPUs)."""
    gpu = device.startswith("cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if gpu else "gloo")
    if gpu:
        torch.cuda.set_device(d.local_rank)
        return f"cuda:{d.local_rank}"
    return device


def share(n: int, chunk: int, d: Dist) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of an ``n``-row batch that process ``d.rank`` runs: whole chunks, contiguous."""
    n_chunks = -(-n // chunk)
    parts = np.array_split(np.arange(n_chunks), d.world)[d.rank]
    if len(parts) == 0:
        return n, n
    return int(parts[0]) * chunk, min(n, (int(parts[-1]) + 1) * chunk)


def gather(local: torch.Tensor, n: int, chunk: int, d: Dist) -> torch.Tensor:
    """The whole batch's outputs (n rows) from each process's share; this process's rows keep their
    gradient, the others' are constants."""
    shares = [share(n, chunk, Dist(r, d.world, 0)) for r in range(d.world)]
    width = max(hi - lo for lo, hi in shares)
    pad = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=local.device)
    pad[: len(local)] = local.detach()
    parts = [torch.empty_like(pad) for _ in range(d.world)]
    dist.all_gather(parts, pad)
    rows = [p[: hi - lo] for p, (lo, hi) in zip(parts, shares, strict=True)]
    rows[d.rank] = local
    return torch.cat(rows)


def any_true(flag: bool) -> bool:
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_gradients(model: torch.nn.Module) -> None:
    """Each process holds the gradient through its own share: their sum is the whole batch's. A
    parameter no process reached keeps no gradient, as in one process (the optimiser skips it)."""
    params = [p for p in model.parameters() if p.requires_grad]
    reached = torch.tensor([int(p.grad is not None) for p in params])
    dist.all_reduce(reached, op=dist.ReduceOp.MAX)
    for p, r in zip(params, reached.tolist(), strict=True):
        if r:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def broadcast_state(model: torch.nn.Module) -> None:
    """Every process starts from rank 0's weights, and keeps rank 0's BatchNorm running statistics
    (each process updates them from its own share, as DistributedDataParallel's default does)."""
    for p in model.parameters():
        dist.broadcast(p.data, 0)
    broadcast_buffers(model)


def broadcast_buffers(model: torch.nn.Module) -> None:
    for b in model.buffers():
        dist.broadcast(b.data, 0)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
