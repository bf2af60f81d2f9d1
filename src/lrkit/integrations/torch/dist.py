"""``torch.distributed`` in one place: whether a process group is up, and a value averaged over the ranks.

Every rank of a DDP run sees its own batch, so a decision taken on one rank's loss (stop the range
test, skip a bad batch's update) would differ between ranks; taken on the mean over the ranks,
it is the same everywhere.

Example:
    >>> rank_mean(2.5)  # no process group: the value itself
    2.5
    >>> rank_means([0.5, None])  # each value over the ranks that have one; None where none has
    [0.5, None]
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["average_gradients", "distributed", "rank", "rank_agree", "rank_mean", "rank_means", "world_size"]


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


def rank() -> int:
    """This process's rank in the initialised group (0 without one)."""
    dist = distributed()
    return dist.get_rank() if dist is not None else 0


def _reduce_device(dist: Any, value: Any, device: torch.device | None) -> torch.device:
    if dist.get_backend() != "nccl":
        return torch.device("cpu")
    if device is None:
        device = value.device if isinstance(value, torch.Tensor) and value.is_cuda else torch.device("cuda")
    return device


def rank_mean(value: Any, device: torch.device | None = None) -> float:
    r"""``value`` (a float or a one-element tensor) averaged over the ranks,
    :math:`\frac{1}{W}\sum_{r=1}^{W} v_r` (one ``all_reduce`` of a float64 scalar; every rank must
    call it at the same point). ``device``: where the reduction runs on an NCCL group (default:
    the value's own device, else the current CUDA device); other backends reduce on the CPU."""
    dist = distributed()
    if dist is None or dist.get_world_size() == 1:
        return float(value.detach().item()) if isinstance(value, torch.Tensor) else float(value)
    device = _reduce_device(dist, value, device)
    if isinstance(value, torch.Tensor):
        t = value.detach().to(device, torch.float64).reshape(1).clone()
    else:
        t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


def rank_means(values: Sequence[float | None], device: torch.device | None = None) -> list[float | None]:
    r"""Each of ``values`` averaged over the ranks that have it: for value :math:`i`,
    :math:`\frac{\sum_r v_{r,i}}{|\{r : v_{r,i} \ne \mathrm{None}\}|}`, ``None`` where no rank
    has one (a validation loss one rank computed at this step reaches every rank; a NaN on any rank
    makes the mean NaN). One ``all_reduce`` of :math:`2n` float64 numbers; every rank must call it
    at the same point with as many values. Without a process group: the values themselves.
    ``device``: as for :func:`rank_mean`.
    """
    dist = distributed()
    if dist is None or dist.get_world_size() == 1:
        return [None if v is None else float(v) for v in values]
    n = len(values)
    flat = [0.0 if v is None else float(v) for v in values] + [0.0 if v is None else 1.0 for v in values]
    t = torch.tensor(flat, dtype=torch.float64, device=_reduce_device(dist, None, device))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    sums, counts = t[:n].tolist(), t[n:].tolist()
    return [s / c if c > 0 else None for s, c in zip(sums, counts)]


def rank_agree(values: Sequence[float], op: str = "mean") -> list[float]:
    """``values`` reduced over the ranks by ``op`` (``"mean"``, ``"min"`` or ``"max"``): the
    ``agree`` of a :class:`~lrkit.doctor.guard.Guard` on every rank of a ``torch.distributed`` run
    (one ``all_reduce``; every rank must call it at the same point). Without a process group: the
    values themselves.

    Example:
        >>> rank_agree([3.0, 1.0], "min")
        [3.0, 1.0]
    """
    if op == "mean":
        return [float(v) for v in rank_means(values)]  # type: ignore[arg-type]
    if op not in ("min", "max"):
        raise ValueError(f"rank_agree: op must be 'mean', 'min' or 'max', got {op!r}")
    dist = distributed()
    if dist is None or dist.get_world_size() == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_reduce_device(dist, None, None))
    dist.all_reduce(t, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.MAX)
    return t.tolist()


#: gradients are averaged in buckets of at most this many elements (one ``all_reduce`` each)
BUCKET_ELEMENTS = 1 << 24


def average_gradients(params: Sequence[torch.Tensor]) -> None:
    r"""Average the gradients of ``params`` over the ranks in place, :math:`g \leftarrow \frac{1}{W}
    \sum_r g_r`: what DDP's backward does, for a model every rank trains without a DDP wrapper (a
    framework's unwrapped model). A parameter without a gradient on some rank counts as zeros
    there; one without a gradient on every rank keeps none. Every rank must call it with the same
    parameters, in the same order. Without a process group: nothing to do.

    Example:
        >>> p = torch.nn.Parameter(torch.ones(2)); p.grad = torch.full((2,), 3.0)
        >>> average_gradients([p]); p.grad.tolist()   # one process: unchanged
        [3.0, 3.0]
    """
    dist = distributed()
    if dist is None or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    params = list(params)
    dev = _reduce_device(dist, params[0] if params else None, None)
    present = torch.tensor([0.0 if p.grad is None else 1.0 for p in params], dtype=torch.float64, device=dev)
    dist.all_reduce(present, op=dist.ReduceOp.SUM)
    live = [p for p, n in zip(params, present.tolist()) if n > 0]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    groups: dict[tuple[Any, Any], list[torch.Tensor]] = {}
    for p in live:
        groups.setdefault((p.grad.device, p.grad.dtype), []).append(p)
    for members in groups.values():
        start = 0
        while start < len(members):
            bucket, size = [], 0
            while start < len(members) and (not bucket or size + members[start].numel() <= BUCKET_ELEMENTS):
                bucket.append(members[start])
                size += members[start].numel()
                start += 1
            flat = torch.cat([q.grad.reshape(-1) for q in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= world
            offset = 0
            for q in bucket:
                n = q.numel()
                q.grad.copy_(flat[offset:offset + n].view_as(q.grad))
                offset += n
