"""``torch.distributed`` in one place: whether a process group is up, and a value averaged over the ranks.

Every rank of a DDP run sees its own batch, so a decision taken on one rank's loss (stop the range
test, skip a bad batch's update) would differ between ranks; taken on the mean over the ranks,
it is the same everywhere.

Example:
    >>> rank_mean(2.5)  # no process group: the value itself
    2.5
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["distributed", "rank_mean", "world_size"]


def distributed() -> Any:
    """``torch.distributed`` if a process group is initialised, else ``None``."""
    dist = getattr(torch, "distributed", None)
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def world_size() -> int:
    """The number of processes of the initialised group (1 without one)."""
    dist = distributed()
    return dist.get_world_size() if dist is not None else 1


def rank_mean(value: Any, device: torch.device | None = None) -> float:
    r"""``value`` (a float or a one-element tensor) averaged over the ranks,
    :math:`\frac{1}{W}\sum_{r=1}^{W} v_r` (one ``all_reduce`` of a float64 scalar; every rank must
    call it at the same point). ``device``: where the reduction runs on an NCCL group (default:
    the value's own device, else the current CUDA device); other backends reduce on the CPU."""
    dist = distributed()
    if dist is None or dist.get_world_size() == 1:
        return float(value.detach().item()) if isinstance(value, torch.Tensor) else float(value)
    if dist.get_backend() == "nccl":
        if device is None:
            device = value.device if isinstance(value, torch.Tensor) and value.is_cuda else torch.device("cuda")
    else:
        device = torch.device("cpu")
    if isinstance(value, torch.Tensor):
        t = value.detach().to(device, torch.float64).reshape(1).clone()
    else:
        t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()
