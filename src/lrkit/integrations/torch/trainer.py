"""PyTorch adapter of the LR finder: :class:`TorchTrainer` (the Trainer protocol) and :func:`find_lr`.

The adapter only translates: it runs one optimizer step at a given learning rate and snapshots /
restores state. The range test and the suggestion live in the NumPy core
(:func:`lrkit.finder.range_test.find`).

Batches
-------
Without ``step_fn`` the loss of a batch is computed as follows (tensors are moved to ``device``
first, recursively through tuples, lists and dicts):

* ``(x, y)`` tuple or list (what ``TensorDataset`` yields): ``loss_fn(model(x), y)``;
* a dict with the keys ``"input"`` and ``"target"``: ``loss_fn(model(batch["input"]), batch["target"])``;
* ``loss_fn=None`` (Hugging Face style): the model computes its own loss, and its output must have
  a ``.loss`` attribute or a ``"loss"`` key; a dict batch is passed as ``model(**batch)`` (put the
  labels in it), a tuple/list as ``model(*batch)``, anything else as ``model(batch)``.

Anything else needs ``step_fn``. With one optimizer, ``step_fn(model, batch) -> loss`` returns the
scalar loss tensor of the batch (the trainer then does the backward pass, gradient accumulation,
AMP scaling, clipping and the optimizer step).

Several optimizers (a GAN's generator and discriminator): pass a list as ``optimizer``; they are
ramped together (every param group keeps its ratio to the first group's LR above 0; a group at 0 stays frozen)
and ``step_fn(model, batch, optimizers) -> loss`` must do the whole update itself (zero_grad,
backward, ``opt.step()`` for each) and return the loss to track (a float or a scalar tensor);
``model`` must own every parameter of every optimizer (e.g. an ``nn.ModuleDict`` of both nets).
``accumulation_steps``, ``grad_clip_norm`` and ``amp`` apply to the built-in update only and are
refused in that mode.

Train mode. If the model is in eval mode when a step runs, ``model.train()`` is called; a model
already in train mode is left as it is (so submodules you froze in eval mode, e.g. BatchNorm layers
when fine-tuning, stay in eval mode). Every submodule's mode is restored after the test.

State
-----
Before the test the trainer takes one CPU copy of model, optimizer, scaler and RNG states
(:class:`lrkit.integrations.torch.state.TorchSnapshot`) and writes it back in place after it,
whatever happens (normal end, divergence, an exception, ``KeyboardInterrupt``): parameters,
buffers, gradients, train/eval modes, optimizer state and param-group hyperparameters, GradScaler,
and the torch / CUDA / NumPy / ``random`` RNGs and the loaders' generators end bitwise as they
began. A loader's generator is found as ``loader.generator``, ``loader.sampler.generator`` or
``loader.batch_sampler.sampler.generator``: a wrapper around a ``DataLoader`` should expose it
under one of those names. The loader is re-iterated from its start after a restore. An LR scheduler attached to the optimizer is allowed (a warning says so): the test sets
param-group LRs directly and never steps the scheduler, and the groups (``initial_lr`` included)
are restored afterwards.

Distributed (DDP)
-----------------
When ``torch.distributed`` is initialised, the loss of every step is averaged over the ranks
(``all_reduce``) before it is returned, so every rank sees the same loss, ramps the same LR and
stops at the same step. Each rank restores its own snapshot.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Callable, Iterator, Sequence

import torch

from lrkit import scaling
from lrkit.finder.range_test import find, plan_budget, plan_verify_budget
from lrkit.finder.regime import length_of, trainer_shape
from lrkit.finder.result import FinderResult
from lrkit.finder.search import FirstBatches
from lrkit.integrations._progress import progress_bar, progress_context, watched  # noqa: F401 - progress_bar re-exported (the CLI imports it)
from lrkit.integrations.torch.dist import average_gradients as _average_gradients
from lrkit.integrations.torch.dist import distributed as _distributed, rank_agree, rank_mean
from lrkit.integrations.torch.groups import group_lr, reference_lr, set_group_lr
from lrkit.integrations.torch.state import RecyclingState, TorchSnapshot, eval_mode
from lrkit.integrations.torch.outputs import agreed_spread, first_tensor, tensor_spread


def _rows(batch: Any) -> int:
    """Examples in a batch: the leading size of its first tensor (1 when it has none)."""
    t = first_tensor(batch)
    return int(t.shape[0]) if t is not None and t.ndim > 0 else 1


__all__ = ["TorchTrainer", "find_lr"]


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _checked_model_and_optimizers(model: Any, optimizer: Any) -> tuple[list[torch.optim.Optimizer], bool, list]:
    """``(optimizers, multi, trainable parameters)``; a clear error for a model or optimizer the
    finder cannot drive (not a module, lazy parameters, nothing trainable, foreign parameters)."""
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    multi = isinstance(optimizer, (list, tuple))
    optimizers = list(optimizer) if multi else [optimizer]
    if not optimizers:
        raise ValueError("optimizer must be an optimizer or a non-empty list of optimizers, got an empty list")
    for i, opt in enumerate(optimizers):
        if not isinstance(opt, torch.optim.Optimizer):
            raise ValueError(
                f"optimizer{f'[{i}]' if multi else ''} must be a torch.optim.Optimizer, got {type(opt).__name__}"
            )
    params = list(model.parameters())
    for name, p in model.named_parameters():
        if isinstance(p, torch.nn.parameter.UninitializedParameter):
            raise ValueError(
                f"model has an uninitialised (lazy) parameter {name!r}: run one forward pass "
                "before the range test so that it can be snapshotted"
            )
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError(
            f"model has no trainable parameters ({len(params)} parameters, none with requires_grad=True)"
        )
    model_ids = {id(p) for p in params}
    for i, opt in enumerate(optimizers):
        opt_params = [p for g in opt.param_groups for p in g["params"]]
        foreign = sum(id(p) not in model_ids for p in opt_params)
        if foreign or not opt_params:
            raise ValueError(
                f"optimizer{f'[{i}]' if multi else ''} does not hold the model's parameters "
                f"({foreign} of its {len(opt_params)} parameters are not parameters of model); "
                "build the optimizer from model.parameters() (or pass the module that owns them)"
            )
    return optimizers, multi, trainable


def _lr_ratios(optimizers: list[torch.optim.Optimizer]) -> list[list[float]]:
    """Every param group's LR over the first group's with an LR above 0 (kept during the test; a
    group at 0 stays frozen); warns when a scheduler is attached (the test sets the LRs itself and
    never steps it)."""
    for opt in optimizers:
        ignored = scaling.lr_ignored(opt)
        if ignored is not None:
            raise ValueError(f"optimizer: {ignored}")
    lrs = [group_lr(g) for opt in optimizers for g in opt.param_groups]
    base_lr = reference_lr(lrs)
    if base_lr is None or any(not (math.isfinite(lr) and lr >= 0) for lr in lrs):
        raise ValueError(
            f"the optimizer's param groups need finite LRs >= 0, one of them above 0, to keep their LR "
            f"ratios during the test (the finder's LR is that of the first group above 0); got {lrs}"
        )
    if any("initial_lr" in g for opt in optimizers for g in opt.param_groups):
        warnings.warn(
            "the optimizer has an LR scheduler attached; the range test sets the param-group LRs "
            "directly, never steps the scheduler, and restores the groups afterwards",
            stacklevel=4,
        )
    return [[group_lr(g) / base_lr for g in opt.param_groups] for opt in optimizers]


def _check_options(*, multi: bool, step_fn: Any, loss_fn: Any, train_loader: Any, val_loader: Any,
                   accumulation_steps: Any, grad_clip_norm: Any, amp: Any, scaler: Any, max_val_batches: Any) -> None:
    """One clear error naming the first of :class:`TorchTrainer`'s options that is out of range
    or contradicts another."""
    if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int) or accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be an integer >= 1, got {accumulation_steps!r}")
    if grad_clip_norm is not None and not (
        isinstance(grad_clip_norm, (int, float)) and not isinstance(grad_clip_norm, bool)
        and math.isfinite(grad_clip_norm) and grad_clip_norm > 0
    ):
        raise ValueError(f"grad_clip_norm must be None or a finite number > 0, got {grad_clip_norm!r}")
    if max_val_batches is not None and (
        isinstance(max_val_batches, bool) or not isinstance(max_val_batches, int) or max_val_batches < 1
    ):
        raise ValueError(f"max_val_batches must be None or an integer >= 1, got {max_val_batches!r}")
    if multi:
        if step_fn is None:
            raise ValueError(
                "with a list of optimizers, step_fn(model, batch, optimizers) must do the update; got step_fn=None"
            )
        bad = [n for n, v in (("accumulation_steps", accumulation_steps != 1), ("grad_clip_norm", grad_clip_norm is not None),
                              ("amp", bool(amp)), ("scaler", scaler is not None)) if v]
        if bad:
            raise ValueError(
                f"{', '.join(bad)} apply to the built-in single-optimizer update; with a list of "
                "optimizers step_fn does the update, so do them there"
            )
        if val_loader is not None and loss_fn is None:
            raise ValueError(
                "with a list of optimizers, evaluate() computes loss_fn(model(x), y) on val_loader; "
                "pass loss_fn or drop val_loader"
            )
    if step_fn is not None and not callable(step_fn):
        raise ValueError(f"step_fn must be callable, got {type(step_fn).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable or None, got {type(loss_fn).__name__}")
    if train_loader is None or not hasattr(train_loader, "__iter__"):
        raise ValueError(f"train_loader must be an iterable of batches, got {type(train_loader).__name__}")
    if length_of(train_loader) == 0:
        raise ValueError("train_loader is empty (len(train_loader) == 0)")


def _checked_device(device: Any, model: torch.nn.Module, trainable: list) -> torch.device:
    """The device the run is on (the first trainable parameter's unless given); every parameter
    must be there already (the finder does not move the model, to leave it untouched)."""
    device = torch.device(trainable[0].device if device is None else device)
    wrong = [p.device for p in model.parameters() if p.device.type != device.type]
    if wrong:
        raise ValueError(
            f"model parameters are on {wrong[0]} but device={device}; move the model first "
            "(the finder does not move it, to leave it untouched)"
        )
    return device


class TorchTrainer(RecyclingState):
    """The :class:`~lrkit.finder.trainer.Trainer` protocol for a PyTorch model and optimizer(s).

    Args:
        model: the ``nn.Module`` (possibly ``DistributedDataParallel``-wrapped) on its device.
        optimizer: a ``torch.optim.Optimizer`` over (some of) the model's parameters, or a list of
            optimizers (then ``step_fn`` does the update, see the module docstring).
        loss_fn: ``loss_fn(output, target) -> scalar tensor``; ``None`` for models returning an
            object with ``.loss``.
        train_loader: an iterable of batches (a ``DataLoader``); cycled when shorter than the test.
        val_loader: optional validation batches for :meth:`evaluate`.
        step_fn: custom loss computation or update (see the module docstring).
        accumulation_steps: micro-batches per optimizer step (>= 1); the loss returned by
            :meth:`step` is their mean and each micro-batch's loss is divided by it before the
            backward pass.
        amp: run forward passes under ``torch.autocast(device.type)`` (bfloat16 on CPU, float16
            on CUDA) and scale the loss with a ``torch.amp.GradScaler`` (enabled on CUDA only,
            where float16 needs it).
        scaler: your own ``GradScaler`` (its state is snapshotted and restored too).
        device: where batches are moved; default the device of the model's first parameter. The
            model must already be there.
        grad_clip_norm: clip the global gradient norm to this value (> 0) before each step.
        max_val_batches: at most this many validation batches per :meth:`evaluate` (>= 1).
        average_gradients: every rank of a ``torch.distributed`` run trains this model without a
            ``DistributedDataParallel`` wrapper: average the gradients over the ranks after each
            backward (:func:`~lrkit.integrations.torch.dist.average_gradients`), as DDP would.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.01)
        >>> data = DataLoader(TensorDataset(torch.randn(32, 4), torch.randn(32, 1)), batch_size=8)
        >>> t = TorchTrainer(model, opt, torch.nn.MSELoss(), data)
        >>> s = t.snapshot(); loss = t.step(0.1); t.restore(s)
        >>> isinstance(loss, float)
        True
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
        loss_fn: Callable[..., torch.Tensor] | None,
        train_loader: Any,
        *,
        val_loader: Any = None,
        step_fn: Callable[..., Any] | None = None,
        accumulation_steps: int = 1,
        amp: bool = False,
        scaler: Any = None,
        device: str | torch.device | None = None,
        grad_clip_norm: float | None = None,
        max_val_batches: int | None = 20,
        average_gradients: bool = False,
    ) -> None:
        optimizers, multi, trainable = _checked_model_and_optimizers(model, optimizer)
        if not isinstance(average_gradients, bool):
            raise ValueError(f"average_gradients must be True or False, got {average_gradients!r}")
        if average_gradients and multi:
            raise ValueError("average_gradients works with one optimizer (step_fn with several optimizers "
                             "applies its own updates); wrap the model in DistributedDataParallel instead")
        self._ratios = _lr_ratios(optimizers)
        _check_options(multi=multi, step_fn=step_fn, loss_fn=loss_fn, train_loader=train_loader, val_loader=val_loader,
                       accumulation_steps=accumulation_steps, grad_clip_norm=grad_clip_norm, amp=amp, scaler=scaler,
                       max_val_batches=max_val_batches)
        device = _checked_device(device, model, trainable)
        if amp and scaler is None:
            scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")

        self.model = model
        self.optimizers = optimizers
        self.multi = multi
        self.loss_fn = loss_fn
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.step_fn = step_fn
        self.accumulation_steps = accumulation_steps
        self.amp = bool(amp)
        self.scaler = scaler
        self.settled_scale: float | None = None  # the first loss scale whose step did not overflow
        self.device = device
        self.grad_clip_norm = grad_clip_norm
        self.max_val_batches = max_val_batches
        self._trainable = trainable
        self.average_gradients = average_gradients
        self._iter: Iterator[Any] | None = None
        self._peeked: list[Any] = []  # a batch output_spread() read ahead, the next step's
        self._sample = FirstBatches()  # the first batches drawn: sample_loss() scores on them
        self._last_batch: Any = None  # the latest batch trained on (output_spread() reads it again)

    # -- Trainer protocol --------------------------------------------------------------------
    def snapshot(self) -> TorchSnapshot:
        """One CPU copy of model, optimizers, scaler, RNGs and loader generators (into the memory of a
        snapshot handed back by :meth:`recycle`, when a guard has let go of one)."""
        return self._take(self.model, self.optimizers, scaler=self.scaler, loaders=self._loaders())

    def candidate_snapshot(self) -> TorchSnapshot:
        """The state every verification run starts from (the Trainer protocol's optional
        ``candidate_snapshot``): :meth:`snapshot`, with a loss scale no higher than
        :attr:`settled_scale`, the first scale whose step did not overflow (in the range test).
        Each run then starts where the scaler had settled instead of skipping the same overflowing
        steps again: a 20-step candidate loses its first ones to the scaler's calibration
        otherwise (all of them from a scale of 2**40, where every candidate was rejected). The
        finder restores its own exact snapshot at its end."""
        state = self.snapshot()
        settled, saved = self.settled_scale, state.scaler
        if settled is not None and saved is not None:
            if saved.get("_scale") is None:  # a scaler not used yet starts from its init_scale
                saved["_init_scale"] = min(float(saved["_init_scale"]), settled)
            elif float(saved["_scale"].tensor) > settled:
                saved["_scale"].tensor.fill_(settled)
        return state

    def restore(self, state: TorchSnapshot) -> None:
        """Write ``state`` back in place; the next :meth:`step` starts a fresh pass over the loader."""
        self._iter = None
        self._peeked.clear()
        state.restore(self.model, self.optimizers, scaler=self.scaler, loaders=self._loaders())

    def _loaders(self) -> list[Any]:
        return [x for x in (self.train_loader, self.val_loader) if x is not None]

    def data_shape(self) -> dict[str, float | None]:
        """The Trainer protocol's optional shape of the data: optimizer steps per pass over the
        loader (``len(train_loader) / accumulation_steps``; under DDP each rank's share), training
        examples (``len(train_loader.dataset)``) and trainable parameters; ``None`` where the loader
        has no length."""
        return {"steps_per_epoch": None if (n := _sized(self.train_loader)) is None else n / self.accumulation_steps,
                "examples": _sized(getattr(self.train_loader, "dataset", None)),
                "parameters": sum(int(p.numel()) for p in self._trainable)}

    def input_sample(self) -> Any:
        """The Trainer protocol's optional inputs of the latest batch trained on (the first element
        of a tuple or list batch, a dict batch as it is), floating-point tensors as NumPy arrays of
        at most 1024 rows; ``None`` before any step (:mod:`lrkit.finder.inputs`)."""
        batch = self._last_batch
        if isinstance(batch, (list, tuple)) and batch:
            batch = batch[0]

        def host(t: Any) -> Any:
            return t[:1024].detach().float().cpu().numpy() if isinstance(t, torch.Tensor) and t.is_floating_point() else None

        return {k: host(v) for k, v in batch.items()} if isinstance(batch, dict) else host(batch)

    def set_lr(self, lr: float) -> None:
        """Set every param group's LR to ``lr`` times its ratio to the first group's initial LR above 0."""
        for opt, ratios in zip(self.optimizers, self._ratios):
            for group, ratio in zip(opt.param_groups, ratios):
                set_group_lr(group, lr * ratio)

    def step(self, lr: float, skip: Callable[[float], bool] | None = None) -> float:
        """One optimizer update at learning rate ``lr``; returns the (rank-averaged) training loss.

        ``skip``: called with that loss after the backward pass, before the update; ``True`` leaves
        the update out (the guard's ``skip_spikes``). Only where the trainer applies the update
        itself (:attr:`skips_steps`: not with a ``step_fn`` that takes the optimizers).
        """
        self.set_lr(lr)
        if not self.model.training:
            self.model.train()
        if self.multi:
            if skip is not None:
                raise ValueError("TorchTrainer.step: skip= needs a trainer that applies the update itself; "
                                 "this one's step_fn(model, batch, optimizers) does")
            batch = self._last_batch = _to_device(self._next_batch(), self.device)
            out = self.step_fn(self.model, batch, self.optimizers)
            loss = self._as_float_tensor(out, "step_fn(model, batch, optimizers)")
            return self._reduce(loss)
        return self._single_step(skip)

    @property
    def skips_steps(self) -> bool:
        """Whether :meth:`step` can leave an update out (``skip=``): when it applies the update itself."""
        return not self.multi

    def agree(self, values: list[float], op: str = "mean") -> list[float]:
        """``values`` reduced over the ``torch.distributed`` ranks by ``op`` (themselves with one
        process): the ``agree`` of a :class:`~lrkit.doctor.guard.Guard` over this trainer, so that
        every rank snapshots at the same steps and resumes from the same snapshot."""
        return rank_agree(values, op)

    def evaluate(self) -> float | None:
        """Mean loss over at most ``max_val_batches`` validation batches (eval mode, no grad)."""
        if self.val_loader is None:
            return None
        total, count = 0.0, 0
        with eval_mode(self.model), torch.no_grad(), self._autocast():
            for i, batch in enumerate(self.val_loader):
                if self.max_val_batches is not None and i >= self.max_val_batches:
                    break
                total += float(self._check_loss(self._eval_loss(batch)).float())
                count += 1
        if count == 0:
            raise ValueError("val_loader is empty")
        return self._reduce(torch.tensor(total / count))

    def sample_loss(self) -> float | None:
        """The Trainer protocol's optional fixed-sample loss: the mean loss (eval mode, no grad) over
        the first training batches this trainer drew (:class:`~lrkit.finder.search.FirstBatches`),
        the same ones at every call (rank-averaged); ``None`` before the first step. Without a validation set the finder scores its verification runs by it:
        every candidate is then judged on the same examples at its end, not on the last few batch
        losses of its own trajectory (:func:`lrkit.finder.search.run_search`)."""
        sample = self._sample.read()
        if not sample:
            return None
        total = 0.0
        with eval_mode(self.model), torch.no_grad(), self._autocast():
            for batch in sample:
                total += float(self._check_loss(self._eval_loss(batch)).float())
        return self._reduce(torch.tensor(total / len(sample)))

    def output_spread(self) -> float | None:
        """How much the model's outputs vary over the examples of one batch (the first validation
        batch, else the latest training batch, or the next one read ahead -- no training batch is
        used up; eval mode, no grad): :func:`lrkit.collapse.output_spread`, the largest over the
        ranks. ``None`` when no output tensor was seen."""
        if self.val_loader is not None:
            batch = next(iter(self.val_loader))
        elif self._last_batch is not None:
            batch = self._last_batch
        else:
            if not self._peeked:
                self._peeked.append(self._next_batch())
            batch = _to_device(self._peeked[0], self.device)
        seen: list[torch.Tensor] = []
        hook = self.model.register_forward_hook(lambda module, args, out: seen.append(first_tensor(out)))
        try:
            with eval_mode(self.model), torch.no_grad(), self._autocast():
                self._eval_loss(batch)
        finally:
            hook.remove()
        return agreed_spread(tensor_spread(seen[0]) if seen else None)

    # -- internals ---------------------------------------------------------------------------
    def _autocast(self):
        if self.amp:
            return torch.autocast(device_type=self.device.type)
        return contextlib.nullcontext()

    def _next_batch(self) -> Any:
        if self._peeked:
            return self._peeked.pop()
        if self._iter is None:
            self._iter = iter(self.train_loader)
        try:
            batch = next(self._iter)
        except StopIteration:
            self._iter = iter(self.train_loader)  # cycle
            try:
                batch = next(self._iter)
            except StopIteration:
                raise ValueError("train_loader is empty (it yielded no batch)") from None
        self._sample.offer(batch, _rows(batch))
        return batch

    def _default_loss(self, batch: Any) -> torch.Tensor:
        model = self.model
        if self.loss_fn is None:
            if isinstance(batch, dict):
                out = model(**batch)
            elif isinstance(batch, (list, tuple)):
                out = model(*batch)
            else:
                out = model(batch)
            loss = getattr(out, "loss", None)
            if loss is None and isinstance(out, dict):
                loss = out.get("loss")
            if loss is None:
                raise ValueError(
                    f"loss_fn is None, so the model's output must have a .loss (Hugging Face style, labels "
                    f"in the batch); got {type(out).__name__} without one. Pass loss_fn or step_fn"
                )
            return loss
        if isinstance(batch, dict):
            missing = [k for k in ("input", "target") if k not in batch]
            if missing:
                raise ValueError(
                    f"a dict batch needs the keys 'input' and 'target', got keys {sorted(map(str, batch))}; "
                    "pass step_fn(model, batch) -> loss for other layouts"
                )
            return self.loss_fn(model(batch["input"]), batch["target"])
        if isinstance(batch, (list, tuple)) and len(batch) == 2:
            x, y = batch
            return self.loss_fn(model(x), y)
        shape = f"a {type(batch).__name__} of length {len(batch)}" if isinstance(batch, (list, tuple)) else type(batch).__name__
        raise ValueError(
            f"batches must be (input, target) pairs or dicts with 'input' and 'target', got {shape}; "
            "pass step_fn(model, batch) -> loss for other layouts"
        )

    def _eval_loss(self, batch: Any) -> torch.Tensor:
        """The loss of one batch moved to the device, as :meth:`evaluate` computes it (the caller
        sets the mode): a ``step_fn`` that takes the optimizers trains, so the default loss then."""
        batch = _to_device(batch, self.device)
        return self._default_loss(batch) if self.multi else self._compute_loss(batch)

    def _compute_loss(self, batch: Any) -> torch.Tensor:
        if self.step_fn is not None:
            return self.step_fn(self.model, batch)
        return self._default_loss(batch)

    @staticmethod
    def _check_loss(loss: Any) -> torch.Tensor:
        if not isinstance(loss, torch.Tensor):
            raise ValueError(f"the loss must be a scalar torch.Tensor, got {type(loss).__name__}")
        if loss.numel() != 1:
            raise ValueError(
                f"the loss must be a scalar tensor, got shape {tuple(loss.shape)}; reduce it "
                "(e.g. reduction='mean')"
            )
        return loss.reshape(())

    @staticmethod
    def _as_float_tensor(out: Any, who: str) -> torch.Tensor:
        if isinstance(out, torch.Tensor):
            if out.numel() != 1:
                raise ValueError(f"{who} must return a scalar loss, got a tensor of shape {tuple(out.shape)}")
            return out.detach().reshape(()).float()
        if isinstance(out, (int, float)) and not isinstance(out, bool):
            return torch.tensor(float(out))
        raise ValueError(f"{who} must return the loss as a float or scalar tensor, got {type(out).__name__}")

    def _single_step(self, skip: Callable[[float], bool] | None = None) -> float:
        opt = self.optimizers[0]
        scaler = self.scaler
        use_scaler = scaler is not None and scaler.is_enabled()
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), dtype=torch.float64)
        acc = self.accumulation_steps
        for k in range(acc):
            batch = self._last_batch = _to_device(self._next_batch(), self.device)
            sync = contextlib.nullcontext()
            if k < acc - 1 and hasattr(self.model, "no_sync"):
                sync = self.model.no_sync()  # DDP: all-reduce gradients on the last micro-batch only
            with sync:
                with self._autocast():
                    loss = self._check_loss(self._compute_loss(batch))
                if not loss.requires_grad:
                    raise ValueError(
                        "the loss does not require grad: no trainable parameter contributed to it"
                    )
                scaled = loss.float() / acc
                (scaler.scale(scaled) if use_scaler else scaled).backward()
            total += loss.detach().to("cpu", torch.float64)
        if self.average_gradients:  # an unwrapped model on every rank: average as DDP would
            _average_gradients(self._trainable)
        # rank-averaged before anything is decided on it: every rank takes the same decision
        mean = self._reduce(total / acc)
        if math.isfinite(mean) and not (skip is not None and skip(mean)):
            if self.grad_clip_norm is not None:
                if use_scaler:
                    scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(self._trainable, self.grad_clip_norm)
            if use_scaler:
                before = float(scaler.get_scale()) if self.settled_scale is None else None
                scaler.step(opt)
                scaler.update()
                if before is not None and float(scaler.get_scale()) >= before:  # not skipped: no overflow
                    self.settled_scale = before
            else:
                opt.step()
        return mean

    def _reduce(self, loss: torch.Tensor) -> float:
        return rank_mean(loss, self.device)


def _sized(obj: Any) -> int | None:
    """:func:`~lrkit.finder.regime.length_of` when it is positive, else ``None``."""
    n = length_of(obj)
    return n if n else None


def _loader_batch_size(loader: Any) -> int | None:
    bs = getattr(loader, "batch_size", None)
    return int(bs) if isinstance(bs, int) and not isinstance(bs, bool) else None


def find_lr(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
    loss_fn: Callable[..., torch.Tensor] | None,
    train_loader: Any,
    *,
    start_lr: float | None = None,
    end_lr: float | None = None,
    num_iter: int | None = None,
    mode: str = "exp",
    smooth: float = 0.05,
    diverge_threshold: float = 4.0,
    val_loader: Any = None,
    accumulation_steps: int = 1,
    amp: bool = False,
    scaler: Any = None,
    device: str | torch.device | None = None,
    progress: bool | Callable[[int, float, float], None] = True,
    step_fn: Callable[..., Any] | None = None,
    verify: bool = True,
    verify_steps: int | None = None,
    train_steps: int | None = None,
    batch_size: int | None = None,
    target_batch_size: int | None = None,
    grad_clip_norm: float | None = None,
    seed: int = 0,
    average_gradients: bool = False,
    many_epochs: bool = True,
) -> FinderResult:
    """Find a good learning rate for a PyTorch model with an LR range test; leaves everything as it was.

    The LR grows from ``start_lr`` to ``end_lr`` over ``num_iter`` optimizer steps
    (:math:`\\eta_i = \\eta_0 (\\eta_1/\\eta_0)^{i/(N-1)}` for ``mode="exp"``), the training loss
    is recorded, and :func:`lrkit.finder.suggest.suggest` turns the curve into a suggestion. With
    ``verify`` the suggestion may check candidate LRs with short runs of ``verify_steps`` optimizer
    steps each, from the same starting state. Model, optimizer, scaler and RNG states are restored
    bitwise afterwards (see the module docstring for batches, several optimizers and DDP).

    Args:
        model, optimizer, loss_fn, train_loader: as for :class:`TorchTrainer`.
        start_lr, end_lr: the LR range; ``None`` takes the optimizer family's default
            (:func:`lrkit.scaling.lr_range`, e.g. ``(1e-7, 1.0)`` for Adam).
        num_iter: optimizer steps of the range test (>= 2); default 100, or planned from
            ``train_steps`` (:func:`lrkit.finder.range_test.plan_budget`).
        mode: ``"exp"`` or ``"linear"`` ramp.
        smooth: EMA weight of the newest loss, in (0, 1].
        diverge_threshold: stop when the smoothed loss exceeds this multiple of the best.
        val_loader, accumulation_steps, amp, scaler, device, step_fn, grad_clip_norm: as for
            :class:`TorchTrainer`.
        progress: ``True`` for a progress bar on stderr (needs rich), ``False`` for none, or a
            callback ``progress(i, lr, loss)``.
        verify: let the suggestion verify candidates with short runs (``False``: curve only).
        verify_steps: optimizer steps per verification run; default
            :data:`lrkit.finder.range_test.DEFAULT_VERIFY_STEPS` when ``verify`` is true
            (or planned from ``train_steps``).
        train_steps: the length of the real training run in optimizer steps, if known: the
            range test and the verification runs are then sized to cost at most 30% of it
            (:func:`lrkit.finder.range_test.plan_budget`; explicit ``num_iter``/``verify_steps`` win).
        batch_size: the effective batch size of one optimizer step; default
            ``train_loader.batch_size * accumulation_steps * world_size`` when known.
        target_batch_size: the batch size of the real run, if different (the suggestion is
            rescaled with :func:`lrkit.scaling.scale_lr`).
        seed: seed of the suggestion's own randomness.
        average_gradients: under ``torch.distributed`` with a model that is not wrapped in
            ``DistributedDataParallel`` (a framework's unwrapped model): average the gradients over
            the ranks after each backward, as DDP would, so the test measures the batch of all
            ranks (which ``batch_size`` assumes) and the replicas stay identical.
        many_epochs: apply the finder's many-epoch rule when the run's shape calls for it
            (:mod:`lrkit.finder.regime`: at least 25 passes over a small training set the model can
            fit divide the answer by a further 5; the shape is read from the data and ``train_steps``).
            ``False``: the answer for a run that does not overfit, or that early stopping ends at
            its best validation loss (and ``lrkit.tune``'s prior, whose trials see the overfitting
            themselves).

    Returns:
        A :class:`~lrkit.finder.result.FinderResult` (``.suggestion``, ``.plot()``, ``.to_json()``).

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(256, 8); y = x @ torch.randn(8, 1)
        >>> model = torch.nn.Linear(8, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.01)
        >>> res = find_lr(model, opt, torch.nn.MSELoss(), DataLoader(TensorDataset(x, y), batch_size=32),
        ...               num_iter=50, progress=False, verify=False)
        >>> 1e-4 < res.suggestion < 2.0
        True
    """
    num_iter, steps = plan_budget(num_iter=num_iter, verify=verify, verify_steps=verify_steps, train_steps=train_steps)
    trainer = TorchTrainer(
        model, optimizer, loss_fn, train_loader, val_loader=val_loader, step_fn=step_fn,
        accumulation_steps=accumulation_steps, amp=amp, scaler=scaler, device=device,
        grad_clip_norm=grad_clip_norm, average_gradients=average_gradients,
    )
    first_opt = trainer.optimizers[0]
    family = scaling.optimizer_family(first_opt)
    if start_lr is None or end_lr is None:
        lo, hi = scaling.lr_range(first_opt)
        start_lr = lo if start_lr is None else start_lr
        end_lr = hi if end_lr is None else end_lr
    if batch_size is None:
        per_loader = _loader_batch_size(train_loader)
        if per_loader is not None:
            dist = _distributed()
            world = dist.get_world_size() if dist is not None else 1
            batch_size = per_loader * accumulation_steps * world
    shape = trainer_shape(trainer, train_steps, enabled=many_epochs)
    ctx = progress_context(progress, num_iter, enabled=_distributed() is None or _distributed().get_rank() == 0)
    with ctx as callback:
        return find(
            watched(trainer, callback, verify_steps=steps),
            start_lr=start_lr, end_lr=end_lr, num_iter=num_iter, mode=mode, smooth=smooth,
            diverge_threshold=diverge_threshold, progress=callback, verify_steps=steps, family=family,
            verify_budget=plan_verify_budget(train_steps, num_iter), train_steps=train_steps,
            batch_size=batch_size, target_batch_size=target_batch_size, rng_seed=seed, **shape,
        )
