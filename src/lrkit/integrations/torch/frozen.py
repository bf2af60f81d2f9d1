r"""Parameters a snapshot does not copy: frozen and trained by no optimizer.

A LoRA or adapter fine-tune (PEFT through the Hugging Face ``Trainer``), or a backbone frozen and
left out of the optimizer, trains a small fraction of its parameters: the rest have
``requires_grad=False``, are in no optimizer's param groups, and no training step changes them.
Copying them in every snapshot would cost the guard and the finder the whole model's size, several
times over (up to ``keep + 2`` snapshots in memory), to save values that never move. Such a
parameter is left out: the snapshot keeps only a fingerprint of it, :data:`SAMPLE` evenly spaced
values (:class:`Unchanged`), and restoring it checks the fingerprint instead of copying.

A frozen tensor that *is* changed in place (an EMA "teacher" updated by hand after each step, as
in mean-teacher, BYOL or DINO) is caught by its fingerprint: :class:`FrozenParams` compares each
left-out parameter's fingerprint with the one of the previous snapshot, and a parameter whose
values moved is copied in full from then on (:class:`lrkit.doctor.fingerprints.StillParts`, as for Keras). A restore to a snapshot taken before that was
noticed cannot bring such a parameter back; :func:`changed_since` names it and the restore warns.

A frozen parameter that is in an optimizer's groups (frozen now, unfrozen later: gradual
unfreezing) is always copied.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    >>> net[0].requires_grad_(False)  # doctest: +ELLIPSIS
    Linear(...)
    >>> opt = torch.optim.SGD(net[1].parameters(), lr=0.1)
    >>> [name for name, _ in frozen_untrained(net, [opt])]
    ['0.weight', '0.bias']
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from lrkit.doctor.fingerprints import StillParts, same_fingerprint

__all__ = ["SAMPLE", "Unchanged", "FrozenParams", "changed_since", "frozen_untrained", "samples"]

#: values of a left-out parameter kept as its fingerprint
SAMPLE = 256


@dataclass(frozen=True)
class Unchanged:
    """A parameter left out of a snapshot: its shape and :data:`SAMPLE` of its values (float32)."""

    shape: tuple[int, ...]
    sample: np.ndarray


def _pick(t: torch.Tensor) -> torch.Tensor | None:
    """:data:`SAMPLE` evenly spaced values of ``t`` as float32, on its device; ``None`` for a tensor
    that cannot be read that way (a quantized or otherwise special tensor: it is copied instead)."""
    try:
        flat = t.detach().reshape(-1)
        return flat[:: max(1, flat.numel() // SAMPLE)][:SAMPLE].float()
    except (RuntimeError, TypeError, NotImplementedError, AttributeError):
        return None


def samples(tensors: Sequence[torch.Tensor]) -> list[np.ndarray | None]:
    """Up to :data:`SAMPLE` evenly spaced values of each tensor, as float32 arrays (one copy from
    each device for all of them; ``None`` where a tensor cannot be sampled)."""
    picked = [_pick(t) for t in tensors]
    out: list[np.ndarray | None] = [None] * len(picked)
    for device in {p.device for p in picked if p is not None}:
        idx = [i for i, p in enumerate(picked) if p is not None and p.device == device]
        # a copy either way: on the CPU a float32 sample is a view of the parameter itself
        host = torch.cat([picked[i] for i in idx]).to("cpu", copy=True)
        for i, part in zip(idx, torch.split(host, [picked[i].numel() for i in idx])):
            out[i] = part.numpy()
    return out


def frozen_untrained(model: torch.nn.Module, optimizers: Sequence[Any]) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters with ``requires_grad=False`` that no optimizer's param groups hold."""
    trained = {id(p) for opt in optimizers for g in getattr(opt, "param_groups", ()) for p in g["params"]}
    return [(n, p) for n, p in model.named_parameters() if not p.requires_grad and id(p) not in trained]


def changed_since(model: torch.nn.Module, left_out: dict[str, Unchanged]) -> list[str]:
    """The left-out parameters whose values are no longer those fingerprinted (or that are gone)."""
    params = dict(model.named_parameters())
    names = [n for n in left_out if n in params]
    now = dict(zip(names, samples([params[n] for n in names])))
    return [n for n, mark in left_out.items()
            if n not in now or now[n] is None or tuple(params[n].shape) != mark.shape
            or not same_fingerprint(now[n], mark.sample)]


class FrozenParams:
    """Which frozen parameters a run's next snapshot leaves out (see the module docstring).

    Example:
        >>> net = torch.nn.Linear(3, 1).requires_grad_(False)
        >>> frozen = FrozenParams()
        >>> sorted(frozen.left_out(net, []))
        ['bias', 'weight']
        >>> with torch.no_grad():
        ...     _ = net.weight.mul_(0.5)     # an EMA update, by hand
        >>> sorted(frozen.left_out(net, [])), sorted(frozen.moving)
        (['bias'], ['weight'])
    """

    def __init__(self) -> None:
        self._parts = StillParts()

    @property
    def moving(self) -> set[str]:
        """The frozen parameters seen changing: copied in full from then on."""
        return self._parts.moving

    def left_out(self, model: torch.nn.Module, optimizers: Sequence[Any]) -> dict[str, Unchanged]:
        """The fingerprints of the parameters to leave out of a snapshot taken now (one that cannot
        be fingerprinted is copied, as every parameter was)."""
        candidates = dict(p for p in frozen_untrained(model, optimizers) if p[0] not in self.moving)
        now = dict(zip(candidates, samples(list(candidates.values()))))
        still = self._parts.still({name: sample for name, sample in now.items() if sample is not None})
        return {name: Unchanged(tuple(candidates[name].shape), sample) for name, sample in still.items()}
