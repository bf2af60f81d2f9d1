"""Bitwise snapshot and in-place restore of everything a PyTorch training step changes.

What is saved (one copy, on the CPU whatever the model's device):

* the model's parameters and buffers (persistent or not: BatchNorm running statistics and
  ``num_batches_tracked`` included), the parameters' ``.grad`` when they have one, and every
  submodule's train/eval mode -- except, through :class:`RecyclingState` (the guards, the
  finder), the parameters that are frozen and in no optimizer (a LoRA fine-tune's base model),
  of which only a fingerprint is kept (:mod:`lrkit.integrations.torch.frozen`);
* each optimizer's per-parameter state (momentum buffers, Adam moments, step counts) and every
  param-group entry except ``params`` (``lr``, betas, weight decay, ``initial_lr`` of an attached
  scheduler, ...);
* a ``GradScaler``'s scale, growth tracker and factors;
* the RNG states: torch CPU, every CUDA device (when CUDA is initialised), NumPy's global
  ``np.random``, Python's ``random``, and the ``torch.Generator`` of a data loader or its sampler.

Restoring writes the saved values back **into the existing tensors** (``Tensor.copy_``) wherever
the tensor still exists with the same shape, dtype and device, so the optimizer keeps referencing
the very same parameter objects and nothing outside sees a new tensor. Entries created after the
snapshot (e.g. Adam's state on its first step) are removed; entries that were replaced are
re-created on their original device.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> before = model.weight.detach().clone()
    >>> snap = TorchSnapshot.take(model, [opt])
    >>> model(torch.ones(1, 2)).sum().backward(); opt.step()
    >>> snap.restore(model, [opt])
    >>> torch.equal(model.weight.detach(), before), len(opt.state)
    (True, 0)
"""
from __future__ import annotations

import contextlib
import copy
import random
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from lrkit.integrations.torch.frozen import FrozenParams, Unchanged, changed_since

__all__ = ["TorchSnapshot", "RecyclingState", "capture_rngs", "loader_generators", "restore_rngs", "rngs_kept"]



def capture_rngs() -> dict[str, Any]:
    """The global RNG states: torch (CPU, and CUDA once initialised), NumPy, Python."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rngs(rng: dict[str, Any]) -> None:
    """Put back what :func:`capture_rngs` took."""
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if "cuda" in rng:
        torch.cuda.set_rng_state_all(rng["cuda"])


@contextlib.contextmanager
def rngs_kept() -> Iterator[None]:
    """Run the block with every global RNG put back as it was afterwards (e.g. around a loader's
    iteration, which draws a seed from torch's)."""
    saved = capture_rngs()
    try:
        yield
    finally:
        restore_rngs(saved)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run the block with ``model`` in evaluation mode, every submodule's own mode put back as it
    was afterwards (``model.train()`` would set them all alike)."""
    modes = [m.training for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for module, mode in zip(model.modules(), modes):
            module.training = mode


@dataclass(frozen=True)
class _SavedTensor:
    tensor: torch.Tensor  # a CPU copy
    device: torch.device
    requires_grad: bool

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickle the data as a NumPy array (written straight from memory, no intermediate copy:
        several times faster than a tensor's own pickling, which matters for disk snapshots of
        large models); dtypes NumPy lacks (bfloat16, ...) pickle as tensors."""
        t = self.tensor
        try:
            data: Any = t.numpy()
        except (TypeError, RuntimeError):
            data = t
        return (_rebuild_saved, (data, str(self.device), self.requires_grad))


def _rebuild_saved(data: Any, device: str, requires_grad: bool) -> _SavedTensor:
    t = data if isinstance(data, torch.Tensor) else torch.from_numpy(data)
    return _SavedTensor(t, torch.device(device), requires_grad)


def _wrapper(t: torch.Tensor) -> bool:
    """``t`` is a tensor subclass that wraps inner tensors (``__tensor_flatten__``: torchao's 8- and
    4-bit optimizer states, DTensor): its ``.to(copy=True)`` may share the inner tensors' memory
    (torchao's does), so it is copied through them."""
    return type(t) is not torch.Tensor and callable(getattr(type(t), "__tensor_flatten__", None))


def _rewrapped(t: torch.Tensor, copy_inner: Any) -> torch.Tensor:
    """``t`` rebuilt around ``copy_inner(inner)`` of each of its inner tensors (what it flattens that
    is not a tensor -- DTensor's device mesh -- is passed on as it is)."""
    names, ctx = t.__tensor_flatten__()
    inner = {name: copy_inner(v) if isinstance(v := getattr(t, name), torch.Tensor) else v for name in names}
    return type(t).__tensor_unflatten__(inner, ctx, t.size(), t.stride())


def _host_copy(t: torch.Tensor, non_blocking: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    """A CPU copy of ``t``. With ``non_blocking`` and a CUDA tensor: into pinned (page-locked)
    memory, enqueued on the current stream after the kernels that wrote ``t`` and before the ones
    that will change it (the optimizer's next update), so it is consistent without waiting for it;
    the caller records an event and synchronises it before reading the copy.

    ``out``: a CPU tensor of a snapshot nobody holds any more (see ``TorchSnapshot.take(recycle=)``);
    when its shape, dtype and memory kind fit, the copy goes into it instead of fresh memory (a
    fresh allocation of a large model's size costs several times the copy itself: first-touch page
    faults on the CPU, page locking for pinned memory)."""
    t = t.detach()
    if _wrapper(t):
        return _rewrapped(t, lambda inner: _host_copy(inner, non_blocking))
    pinned = non_blocking and t.device.type == "cuda"
    if (
        out is not None and out.device.type == "cpu" and out.shape == t.shape and out.dtype == t.dtype
        and out.is_contiguous() and (not pinned or out.is_pinned())
        and (t.device.type != "cpu" or out.untyped_storage().data_ptr() != t.untyped_storage().data_ptr())
    ):
        out.copy_(t, non_blocking=pinned)
        return out
    if pinned:
        out = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
        out.copy_(t, non_blocking=True)
        return out
    return t.to("cpu", copy=True)


def _save(value: Any, non_blocking: bool = False, into: Any = None) -> Any:
    """Deep copy with tensors cloned to the CPU (recording their device); ``into``, the same
    structure saved earlier and no longer needed, lends its tensors' memory where they fit."""
    if isinstance(value, torch.Tensor):
        out = into.tensor if isinstance(into, _SavedTensor) else None
        return _SavedTensor(_host_copy(value, non_blocking, out), value.device, value.requires_grad)
    if isinstance(value, dict):
        old = into if isinstance(into, dict) else {}
        return {k: _save(v, non_blocking, old.get(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        old = into if isinstance(into, (list, tuple)) and len(into) == len(value) else (None,) * len(value)
        saved = [_save(v, non_blocking, o) for v, o in zip(value, old)]
        return saved if isinstance(value, list) else tuple(saved)
    return copy.deepcopy(value)


def _load(current: Any, saved: Any) -> Any:
    """The restored value of ``saved``, written into ``current`` in place when possible."""
    if isinstance(saved, _SavedTensor):
        t = saved.tensor
        if (
            isinstance(current, torch.Tensor)
            and current.shape == t.shape
            and current.dtype == t.dtype
            and current.device == saved.device
        ):
            with torch.no_grad():
                current.copy_(t)
            return current
        if _wrapper(t):
            fresh = _rewrapped(t, lambda inner: inner.to(saved.device, copy=True))
        else:
            fresh = t.to(saved.device, copy=True)
        return fresh.requires_grad_(saved.requires_grad) if fresh.is_floating_point() else fresh
    if isinstance(saved, dict):
        if isinstance(current, dict):
            for k in [k for k in current if k not in saved]:
                del current[k]
            for k, v in saved.items():
                current[k] = _load(current.get(k), v)
            return current
        return {k: _load(None, v) for k, v in saved.items()}
    if isinstance(saved, list):
        cur = current if isinstance(current, list) and len(current) == len(saved) else [None] * len(saved)
        return [_load(c, v) for c, v in zip(cur, saved)]
    if isinstance(saved, tuple):
        cur = current if isinstance(current, tuple) and len(current) == len(saved) else (None,) * len(saved)
        return tuple(_load(c, v) for c, v in zip(cur, saved))
    return copy.deepcopy(saved)


def loader_generators(loader: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` objects a ``DataLoader`` draws from (its own and its samplers')."""
    found: list[torch.Generator] = []
    candidates = [loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)]
    batch_sampler = getattr(loader, "batch_sampler", None)
    if batch_sampler is not None:
        candidates.append(getattr(batch_sampler, "sampler", None))
    for obj in candidates:
        gen = getattr(obj, "generator", None) if obj is not None else None
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


_MISSING = object()


@dataclass
class TorchSnapshot:
    """A CPU copy of model, optimizers, scaler and RNG states; see the module docstring."""

    model_tensors: dict[str, _SavedTensor | Any]
    model_buffers: dict[str, Any]
    grads: dict[str, Any] | None
    modes: list[bool]
    optimizers: list[dict[str, Any]]
    scaler: dict[str, Any] | None
    rng: dict[str, Any]
    # (the live generator, its saved state), in the order of ``loader_generators`` over the
    # loaders; the live references are dropped when pickled (see ``__getstate__``)
    generators: list[tuple[torch.Generator | None, torch.Tensor]] = field(default_factory=list)
    # the CUDA event after the non-blocking copies (``None``: the copies are complete)
    pending: Any = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the live generators (a pickled copy would be a different object), after
        the pending device-to-host copies are complete."""
        self.wait()
        state = dict(self.__dict__)
        state["generators"] = [(None, saved) for _, saved in self.generators]
        state["pending"] = None
        return state

    def wait(self) -> None:
        """Block until the non-blocking device-to-host copies of :meth:`take` are complete."""
        if self.pending is not None:
            self.pending.synchronize()
            self.pending = None

    @classmethod
    def take(
        cls,
        model: torch.nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        *,
        scaler: Any = None,
        loaders: Sequence[Any] = (),
        grads: bool = True,
        non_blocking: bool = False,
        recycle: "TorchSnapshot | None" = None,
        left_out: "dict[str, Unchanged] | None" = None,
    ) -> "TorchSnapshot":
        """Copy the state (see the module docstring).

        ``grads=False`` leaves the gradients out (a third less to copy; :meth:`restore` then
        leaves ``.grad`` as it is): for a snapshot taken after ``optimizer.step()``, whose
        gradients the next ``zero_grad()`` discards anyway. ``non_blocking=True``: CUDA tensors
        are copied into pinned host memory without waiting (the copy overlaps with the next
        kernels; :meth:`wait`, :meth:`restore` and pickling synchronise first). CPU tensors are
        copied synchronously either way.

        ``recycle``: a snapshot of the same model that nobody will read again (one a guard has
        dropped, or has finished writing to disk). Its tensors become this snapshot's where shape
        and dtype fit, so a periodic snapshot copies into memory it already owns instead of
        allocating the model's size again (8-10x faster for a 51M-parameter model on the CPU;
        on CUDA the pinned buffers are reused). ``recycle`` must not be used afterwards.

        ``left_out``: parameters not copied, by name, with their fingerprints
        (:meth:`lrkit.integrations.torch.frozen.FrozenParams.left_out`); :meth:`restore` checks
        them instead of writing them back.
        """
        nb = bool(non_blocking) and torch.cuda.is_available()
        old = recycle
        if old is not None:
            old.wait()
        old_params = old.model_tensors if old is not None else {}
        old_buffers = old.model_buffers if old is not None else {}
        old_grads = (old.grads or {}) if old is not None else {}
        left_out = left_out or {}
        params = {name: left_out[name] if name in left_out else _save(p, nb, old_params.get(name))
                  for name, p in model.named_parameters()}
        buffers = {name: _save(b, nb, old_buffers.get(name)) for name, b in model.named_buffers()}
        saved_grads = (
            {name: (_save(p.grad, nb, old_grads.get(name)) if p.grad is not None else None)
             for name, p in model.named_parameters() if name not in left_out}
            if grads else None
        )
        opts = []
        for j, opt in enumerate(optimizers):
            plist = [p for g in opt.param_groups for p in g["params"]]
            old_state = old.optimizers[j]["state"] if old is not None and j < len(old.optimizers) else {}
            opts.append(
                {
                    "state": {i: _save(opt.state[p], nb, old_state.get(i)) for i, p in enumerate(plist)
                              if p in opt.state},
                    "groups": [{k: _save(v) for k, v in g.items() if k != "params"} for g in opt.param_groups],
                    "num_params": len(plist),
                    "opt_called": opt.__dict__.get("_opt_called", _MISSING),
                }
            )
        scaler_state = None
        if scaler is not None:
            scaler_state = {
                name: _save(getattr(scaler, name))
                for name in (
                    "_enabled", "_init_scale", "_init_growth_tracker", "_growth_factor",
                    "_backoff_factor", "_growth_interval", "_scale", "_growth_tracker",
                )
                if hasattr(scaler, name)
            }
        rng = capture_rngs()
        gens = []
        for loader in loaders:
            for gen in loader_generators(loader):
                gens.append((gen, gen.get_state()))
        pending = None
        if nb and torch.cuda.is_initialized():
            pending = torch.cuda.Event()
            pending.record()  # on the current stream, after the copies
        return cls(params, buffers, saved_grads, [m.training for m in model.modules()], opts, scaler_state, rng, gens,
                   pending)

    def restore(
        self,
        model: torch.nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        *,
        scaler: Any = None,
        loaders: Sequence[Any] = (),
    ) -> None:
        """Write the snapshot back in place (see the module docstring).

        ``loaders`` (the same loaders, in the same order, as for :meth:`take`) find the loaders'
        generators again when the snapshot was pickled and loaded (e.g. kept on disk).
        """
        self.wait()
        unchanged = {n: s for n, s in self.model_tensors.items() if isinstance(s, Unchanged)}
        moved = changed_since(model, unchanged) if unchanged else []
        if moved:
            warnings.warn(
                f"lrkit: {len(moved)} frozen parameter(s) outside the optimizer changed since this snapshot, which "
                f"kept only a fingerprint of them ({', '.join(moved[:3])}{', ...' if len(moved) > 3 else ''}); they "
                "keep their current values (one changed in place, e.g. an EMA copy, is copied in full by the "
                "snapshots taken after its change was seen)", RuntimeWarning, stacklevel=2)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if isinstance(self.model_tensors[name], Unchanged):
                    continue
                _load(p, self.model_tensors[name])
                if self.grads is None:
                    continue  # taken with grads=False: leave them
                saved_grad = self.grads.get(name)
                if saved_grad is None:
                    p.grad = None
                else:
                    p.grad = _load(p.grad, saved_grad)
            for name, b in model.named_buffers():
                if name in self.model_buffers:
                    restored = _load(b, self.model_buffers[name])
                    if restored is not b:  # shape/dtype changed: put the saved tensor back on its module
                        owner_name, _, attr = name.rpartition(".")
                        owner = model.get_submodule(owner_name) if owner_name else model
                        owner._buffers[attr] = restored
        for module, mode in zip(model.modules(), self.modes):
            module.training = mode
        for opt, saved in zip(optimizers, self.optimizers):
            plist = [p for g in opt.param_groups for p in g["params"]]
            if len(plist) != saved["num_params"] or len(opt.param_groups) != len(saved["groups"]):
                raise RuntimeError(
                    "the optimizer's param groups changed during the range test "
                    f"({saved['num_params']} params before, {len(plist)} after); cannot restore it"
                )
            for i, p in enumerate(plist):
                if i in saved["state"]:
                    if p in opt.state:
                        _load(opt.state[p], saved["state"][i])
                    else:
                        opt.state[p] = _load(None, saved["state"][i])
                elif p in opt.state:
                    del opt.state[p]
            for group, sgroup in zip(opt.param_groups, saved["groups"]):
                for k in [k for k in group if k != "params" and k not in sgroup]:
                    del group[k]
                for k, v in sgroup.items():
                    group[k] = _load(group.get(k), v)
            if saved["opt_called"] is _MISSING:
                opt.__dict__.pop("_opt_called", None)
            else:
                opt.__dict__["_opt_called"] = saved["opt_called"]
        if scaler is not None and self.scaler is not None:
            for name, value in self.scaler.items():
                setattr(scaler, name, _load(getattr(scaler, name, None), value))
        restore_rngs(self.rng)
        live = [gen for loader in loaders for gen in loader_generators(loader)]
        for i, (gen, state) in enumerate(self.generators):
            if gen is None:  # unpickled: the generator is the i-th of the loaders given now
                if i >= len(live):
                    raise RuntimeError(
                        f"this snapshot holds the state of {len(self.generators)} data-loader generator(s); "
                        f"pass the same loaders to restore() (found {len(live)})"
                    )
                gen = live[i]
            gen.set_state(state)


class RecyclingState:
    """Base of a guard's view of a PyTorch run (its ``snapshot()``/``restore()`` object): the
    guard hands back, through :meth:`recycle`, each snapshot it will never read again (dropped
    from memory, or durable on disk; maybe from its writer thread), and the next :meth:`_take`
    copies into that memory (``TorchSnapshot.take(recycle=...)``) instead of allocating a model's
    size again. ``recycle(None)`` (the guard closing) lets go of it. The parameters that are frozen
    and in no optimizer are left out of its snapshots, fingerprinted
    (:class:`~lrkit.integrations.torch.frozen.FrozenParams`).
    """

    _spare: "TorchSnapshot | None" = None
    _spare_lock = threading.Lock()
    _frozen: FrozenParams | None = None

    def recycle(self, state: "TorchSnapshot | None") -> None:
        with self._spare_lock:
            self._spare = state

    def _take(self, model: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer], **kw: Any) -> TorchSnapshot:
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if self._frozen is None:
            self._frozen = FrozenParams()
        left_out = self._frozen.left_out(model, optimizers)
        return TorchSnapshot.take(model, optimizers, recycle=spare, left_out=left_out, **kw)
