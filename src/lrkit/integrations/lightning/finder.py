r"""The LR finder as a Lightning callback: it runs when ``fit`` starts and writes the LR back.

In Lightning's own style (the ``LearningRateFinder`` callback and ``Tuner.lr_find``): put
:class:`LRFinder` in ``callbacks`` and call ``trainer.fit`` as usual. At ``on_fit_start`` it runs
lrkit's range test (with its verification runs) on

* the LightningModule and the optimizer(s) its ``configure_optimizers`` built,
* the training batches of ``fit`` (a ``DataModule``, the module's ``train_dataloader`` or the
  loaders passed to ``fit``), moved to the device by the strategy,
* the loss of your own ``training_step(batch, batch_idx)`` (a tensor or a dict with ``"loss"``),
  which also scores the verification runs on the first validation loader of ``fit`` (eval mode, at
  most 20 batches; with none, or ``limit_val_batches=0``, on a fixed sample of training batches),
* ``accumulate_grad_batches`` and ``gradient_clip_val`` (norm clipping),
* the run's length (``trainer.estimated_stepping_batches``) for the finder's budget,

leaves the module, the optimizer state and the RNG states bitwise as they were, then writes the
suggestion into the module's ``lr`` or ``learning_rate`` (attribute or ``hparams``, as Lightning
looks them up; ``attr_name`` to choose) and builds the optimizers and LR schedulers again with
``configure_optimizers`` -- so a scheduler that reads ``self.lr`` (``OneCycleLR(max_lr=self.lr)``)
gets the new value too. Nothing is logged during the test: ``self.log`` calls in
``training_step`` are skipped while it runs (Lightning has no place for them before the fit loop
starts), so there is no warning either.

Example::

    finder = LRFinder()
    trainer = lightning.Trainer(max_epochs=5, callbacks=[finder])
    trainer.fit(model, datamodule=dm)          # model.lr was set to finder.result.suggestion
    print(finder.result.summary())

Several processes (DDP): the range test trains through the strategy (the DDP wrapper averages the
gradients, so it measures the batch the run trains with) and decides on the ranks' mean losses:
every rank writes the same suggestion (tested with ``ddp_spawn`` on two CPU processes).

Not covered: manual optimization (``automatic_optimization = False``: use
:func:`lrkit.find_lr` with your own ``step_fn``), sharded strategies (FSDP, DeepSpeed: not tested),
and LR schedulers configured outside ``configure_optimizers``.
"""
from __future__ import annotations

import contextlib
import itertools
import warnings
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.parsing import lightning_getattr, lightning_hasattr, lightning_setattr

from lrkit.finder.result import FinderResult
from lrkit.integrations.torch.groups import reference_lr, set_group_lr
from lrkit.integrations.torch.trainer import find_lr as _find_lr_torch

__all__ = ["LRFinder"]

_TAKEN = ("step_fn", "accumulation_steps", "grad_clip_norm", "loss_fn", "val_loader")


def _fit_val_loader(trainer: pl.Trainer) -> Any:
    """The first validation loader of ``fit`` (passed to it, or a module's or DataModule's
    ``val_dataloader``), or ``None``: none defined, or validation off (``limit_val_batches=0``).
    Read from the source Lightning will load it from (``on_fit_start`` comes before the fit loop
    loads its data), as the training loader is."""
    if not trainer.limit_val_batches:
        return None
    source = getattr(trainer.fit_loop.epoch_loop.val_loop, "_data_source", None)
    if source is None or not source.is_defined() or getattr(source, "instance", None) is None:
        return None
    loaders = source.dataloader()
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    return loaders


def _lr_attribute(module: Any, attr_name: str) -> str:
    if attr_name:
        if not lightning_hasattr(module, attr_name):
            raise ValueError(f"LRFinder: attr_name={attr_name!r} is neither an attribute of "
                             f"{type(module).__name__} nor a key of its hparams")
        return attr_name
    for name in ("lr", "learning_rate"):
        if lightning_hasattr(module, name):
            return name
    raise ValueError(f"LRFinder: {type(module).__name__} has no 'lr' or 'learning_rate' (attribute or hparams) "
                     f"to write the LR into and read it from in configure_optimizers; add one "
                     f"(self.lr = lr, or save_hyperparameters()) or pass attr_name=...")


@contextlib.contextmanager
def _no_logging(module: Any):
    """``module.log``/``log_dict`` do nothing while the test runs (no loop collects them yet)."""
    module.log = lambda *args, **kwargs: None
    module.log_dict = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del module.log, module.log_dict


def _loss_of(output: Any) -> Any:
    if isinstance(output, dict):
        if "loss" not in output:
            raise ValueError(f"LRFinder: training_step returned a dict without 'loss' (keys {sorted(output)}); "
                             f"return the loss tensor or {{'loss': loss, ...}}")
        return output["loss"]
    if output is None:
        raise ValueError("LRFinder: training_step returned None (a skipped batch); the range test needs a loss "
                         "at every step")
    return output


@contextlib.contextmanager
def _base_lrs(trainer: pl.Trainer, optimizer: Any, module_lr: Any):
    """Positive group LRs while the test runs (a warmup from 0 may have set them all to 0).

    The range test keeps the groups' LR ratios, read from their current LRs; a scheduler that
    starts with a warmup from 0 leaves nothing to read. Then the groups get the scheduler's
    ``base_lrs`` if they are positive, else the module's LR (ratios 1).
    """
    saved = [float(group["lr"]) for group in optimizer.param_groups]
    if reference_lr([float(lr) for lr in saved]) is None:  # a group at 0 beside one above it: frozen, kept
        configs = trainer.lr_scheduler_configs
        base = [float(b) for b in getattr(configs[0].scheduler, "base_lrs", [])] if configs else []
        if not (len(base) == len(saved) and base[0] > 0):
            base = [float(module_lr)] * len(saved) if isinstance(module_lr, (int, float)) and module_lr > 0 else []
        for group, lr in zip(optimizer.param_groups, base):
            set_group_lr(group, lr)
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, saved):
            set_group_lr(group, lr)


class LRFinder(pl.Callback):
    """Find the LR when ``fit`` starts, write it into the module, rebuild the optimizers.

    Args:
        attr_name: the module's attribute (or ``hparams`` key) for the LR; default ``"lr"`` or
            ``"learning_rate"``, whichever exists (Lightning's rule).
        write: write the suggestion back (``False``: only :attr:`result`).
        train_steps: optimizer steps of the real run; default ``trainer.estimated_stepping_batches``.
        kwargs: passed on to :func:`lrkit.find_lr` (``num_iter``, ``start_lr``, ``end_lr``,
            ``verify``, ``progress``, ``seed``, ``target_batch_size``, ...).

    Attributes:
        result: the :class:`~lrkit.FinderResult` after ``fit`` started (``None`` before).
        lr_attribute: where the LR was written.

    Raises:
        ValueError: at construction, a keyword that Lightning decides (``step_fn``, ...); at fit
            start, manual optimization or no LR attribute to write into.
    """

    def __init__(self, *, attr_name: str = "", write: bool = True, train_steps: int | None = None,
                 **kwargs: Any) -> None:
        taken = sorted(set(kwargs) & set(_TAKEN))
        if taken:
            raise ValueError(f"LRFinder: {', '.join(taken)} come from the LightningModule and the Trainer "
                             f"(training_step, accumulate_grad_batches, gradient_clip_val); do not pass them")
        self.attr_name = attr_name
        self.write = write
        self.train_steps = train_steps
        self.kwargs = kwargs
        self.result: FinderResult | None = None
        self.lr_attribute: str | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not pl_module.automatic_optimization:
            raise ValueError("LRFinder: the module uses manual optimization; call lrkit.find_lr(model, "
                             "optimizers, None, loader, step_fn=...) yourself with your update")
        attr = _lr_attribute(pl_module, self.attr_name) if self.write else None
        loader = trainer.fit_loop._data_source.dataloader()
        val = _fit_val_loader(trainer)
        counter = itertools.count()

        # with several processes through the strategy (its DDP wrapper averages the gradients over
        # the ranks): the finder measures the batch the run trains with, and every rank decides
        # on the ranks' mean losses (lrkit's TorchTrainer), so all get the same suggestion
        several = trainer.world_size > 1

        def step_fn(model: Any, batch: Any) -> Any:
            batch = trainer.strategy.batch_to_device(batch)
            step = trainer.strategy.training_step if several else model.training_step
            return _loss_of(step(batch, next(counter)))

        clip = trainer.gradient_clip_val
        if clip is not None and trainer.gradient_clip_algorithm not in (None, "norm"):
            clip = None  # value clipping has no counterpart in the finder: the test runs unclipped
        train_steps = self.train_steps
        if train_steps is None:
            steps = trainer.estimated_stepping_batches
            train_steps = int(steps) if steps != float("inf") else None
        (optimizer,) = trainer.optimizers  # automatic optimization: exactly one
        module_lr = lightning_getattr(pl_module, attr) if attr else None
        with _no_logging(pl_module), _base_lrs(trainer, optimizer, module_lr), warnings.catch_warnings():
            # the schedulers configure_optimizers attached are built again below
            warnings.filterwarnings("ignore", message="the optimizer has an LR scheduler attached")
            self.result = _find_lr_torch(
                pl_module, optimizer, None, loader, val_loader=val, step_fn=step_fn,
                accumulation_steps=int(trainer.accumulate_grad_batches),
                grad_clip_norm=float(clip) if clip else None, train_steps=train_steps, **self.kwargs)
        if attr is not None:
            lightning_setattr(pl_module, attr, self.result.suggestion)
            self.lr_attribute = attr
            trainer.strategy.setup_optimizers(trainer)  # configure_optimizers again, with the new LR
