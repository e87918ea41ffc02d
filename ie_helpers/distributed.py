"""Data parallelism for the kit's hand-written training loops (the encoder token and pair classifiers).

Under ``torchrun`` or ``accelerate launch`` (``WORLD_SIZE`` > 1) every process draws the same batches from the
same seeded generator and takes its share of each (``shard``); the loss is summed over the process's items and
divided by the batch's item count over all processes, times the world size, so that DDP's gradient average
equals the gradient of the whole batch's mean loss: the same steps and the same updates as one process, up to
float summation order. A plain run (one process) never touches ``torch.distributed``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence


def world_size() -> int:
    """Processes of this launch (torchrun / accelerate set ``WORLD_SIZE``; a plain run is one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_group(device: str) -> tuple[int, int]:
    """(rank, world size); with more than one process the default group is created once (nccl on CUDA,
    gloo on CPU)."""
    n = world_size()
    if n == 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if device.startswith("cuda"):  # before any CUDA tensor: all_sum's tensors land on this process's GPU
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size()


def local_device(device: str) -> str:
    """This process's device: ``cuda:<LOCAL_RANK>`` under a multi-process CUDA launch, else ``device``."""
    if world_size() > 1 and device.startswith("cuda"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def shard(batch: Sequence[int], rank: int, world: int) -> list[int]:
    """This process's items of one batch (every ``world``-th from ``rank``); may be empty for a short batch."""
    return list(batch[rank::world])


def all_sum(value: float) -> float:
    """``value`` summed over every process (itself in a plain run)."""
    if world_size() == 1:
        return float(value)
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item())


def gather_rows(mine, sizes: Sequence[int], rank: int):
    """One batch's rows from every process, rank by rank (``sizes[r]`` rows from process r). This process's rows
    keep their autograd graph, the others arrive as values: a loss over the whole batch then sends each process
    the gradient of its own rows, and the processes' parameter gradients sum to the whole batch's."""
    if world_size() == 1:
        return mine
    import torch
    import torch.distributed as dist

    width = max(sizes)
    padded = torch.cat([mine.detach(), mine.new_zeros((width - mine.shape[0], *mine.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    rows = [part[:n] for part, n in zip(parts, sizes)]
    rows[rank] = mine
    return torch.cat(rows)


def sum_gradients(params: Sequence) -> None:
    """Each parameter's gradient summed over the processes, in one all-reduce. A parameter that no process gave
    a gradient keeps none (AdamW skips it, as in one process); one that only some processes touched counts zero
    from the others."""
    if world_size() == 1:
        return
    import torch
    import torch.distributed as dist

    params = list(params)
    device = params[0].device
    touched = torch.tensor([float(p.grad is not None) for p in params], device=device)
    dist.all_reduce(touched)
    used = [p for p, t in zip(params, touched.tolist()) if t > 0]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in used])
    dist.all_reduce(flat)
    offset = 0
    for p in used:
        p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def barrier() -> None:
    """Wait for every process (no-op in a plain run): e.g. until rank 0 has written what the others read."""
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


def wrap(model, device: str):
    """``model`` in ``DistributedDataParallel`` when there is more than one process, else unchanged."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.startswith("cuda") else None)


def is_main() -> bool:
    """Rank 0 (or a plain run): the one process that writes files."""
    return int(os.environ.get("RANK", "0")) == 0
