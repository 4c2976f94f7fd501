"""Data-parallel training on ``torch.distributed``: process group, shards, collectives.

Launch any ``embdim run`` / ``search`` / ``retrain`` under ``torchrun``::

    torchrun --nproc_per_node=2 -m embdim run config.yaml --out runs/x          # gloo on CPU
    torchrun --nproc_per_node=8 -m embdim run config.yaml --set train.device=cuda --out runs/x

The command line sets up the process group from torchrun's environment (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``): NCCL when ``train.device`` is CUDA (each process on GPU
``LOCAL_RANK``), gloo on CPU. What each part of the pipeline then does:

* **Training** (:class:`embdim.train.Trainer`: FDE, every retrain, SSEDS pre-training) wraps the
  model in ``DistributedDataParallel``. ``train.batch_size`` stays the *global* batch: each of the
  ``W`` processes reads its own contiguous shard of the training rows (only those rows are loaded
  from the memory-mapped arrays) and trains on ``batch_size / W`` of them per step, so one step
  sees as many rows as a single process would, with the same learning rate.
* **Evaluation**: each process predicts a contiguous slice of the split; the slices are gathered
  in row order and the metrics computed once over the whole split (every row counted exactly
  once), on rank 0, and sent to the others so that early stopping agrees everywhere.
* **Search loops** that are not plain training (the AutoDim bilevel search, SSEDS saliency)
  average their gradients / saliency across processes with :func:`average_gradients` /
  :func:`all_reduce_mean` (``DistributedDataParallel`` cannot wrap their ``autograd.grad`` and
  ``backward(inputs=...)`` calls); the plan is then taken from rank 0, so every process retrains
  the same plan.
* **Files**: only rank 0 writes the run folder (config, plan, log, checkpoints, metrics); a resume
  reads the checkpoint on every rank (it holds every rank's RNG state).

Without ``torchrun`` (``WORLD_SIZE`` unset or 1) every function here is a no-op for one process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from embdim.errors import ConfigError


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device: str) -> bool:
    """Join the process group torchrun describes (no-op without torchrun); True when joined."""
    if not launched_by_torchrun() or is_distributed():
        return is_distributed()
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed support")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={device!r} but CUDA is not available on this machine")
        torch.cuda.set_device(local_rank())
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    return True


def shutdown() -> None:
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """``cuda`` -> this process's GPU (``cuda:LOCAL_RANK``) under torchrun; others unchanged."""
    if device.type == "cuda" and device.index is None and is_distributed():
        return torch.device("cuda", local_rank())
    return device


# ---- shards -----------------------------------------------------------------------------------
def training_shard(rows: int) -> tuple[int, int]:
    """This rank's rows of a training split: ``W`` contiguous shards of equal size ``rows // W``
    (so every rank takes the same number of steps; the last ``rows % W`` rows are left out)."""
    w, r = world_size(), rank()
    size = rows // w
    return r * size, (r + 1) * size


def evaluation_shard(rows: int) -> tuple[int, int]:
    """This rank's rows of a split to evaluate: contiguous, covering every row exactly once."""
    w, r = world_size(), rank()
    return r * rows // w, (r + 1) * rows // w


def training_loader_options(rows: int, batch_size: int) -> dict[str, Any]:
    """``BatchLoader`` keywords for this process's share of a training split: its shard of the
    rows and its share of the global batch (the whole split and batch for one process)."""
    if not is_distributed():
        return {"batch_size": batch_size, "row_range": None}
    return {"batch_size": local_batch_size(batch_size), "row_range": training_shard(rows)}


def local_batch_size(batch_size: int) -> int:
    """The per-process share of the global ``train.batch_size``."""
    w = world_size()
    if batch_size % w:
        raise ConfigError(f"train.batch_size={batch_size} is not divisible by the {w} processes; "
                          f"choose a multiple of {w}")
    return batch_size // w


# ---- collectives ------------------------------------------------------------------------------
def average_gradients(params: Sequence[torch.Tensor]) -> None:
    """Average ``p.grad`` over the processes, in place (one all-reduce over all of them)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not is_distributed() or not grads:
        return
    for g, mean in zip(grads, average_tensors(grads), strict=True):
        g.copy_(mean)


def average_tensors(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The mean over the processes of each tensor (new tensors; inputs unchanged)."""
    if not is_distributed():
        return list(tensors)
    flat = torch.cat([t.reshape(-1) for t in tensors])  # a new tensor: inputs unchanged
    dist.all_reduce(flat)
    flat /= world_size()
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


def all_reduce_mean(array: np.ndarray) -> np.ndarray:
    """The mean over the processes of a numpy array (float64)."""
    if not is_distributed():
        return array
    t = torch.as_tensor(np.asarray(array, dtype=np.float64))
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return (t / world_size()).cpu().numpy()


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over the processes (a scalar loss window, say)."""
    if is_distributed():
        dist.all_reduce(t)
    return t


def max_over_processes(n: int) -> int:
    """The largest ``n`` of any process."""
    if not is_distributed():
        return n
    t = torch.tensor([n], dtype=torch.long)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``t`` along dim 0 in rank order (lengths may differ)."""
    if not is_distributed():
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[:t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` has it, on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
