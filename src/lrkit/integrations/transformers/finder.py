r"""The LR finder on a Hugging Face ``Trainer`` itself: ``lrkit.transformers.find_lr(trainer)``.

Everything the range test needs is read from the ``Trainer`` you already built, so the test runs
the step your training will run:

* the model (``trainer.model``, on its device) and the optimizer ``trainer.create_optimizer()``
  builds from the ``TrainingArguments`` (``optim``, weight decay and its parameter groups), or
  the one you passed in ``optimizers=(optimizer, None)``;
* the batches of ``trainer.get_train_dataloader()`` (your data collator, batch size, sampler and
  workers), moved to the device as the ``Trainer`` does (``trainer._prepare_inputs``), and
  validation batches of ``trainer.get_eval_dataloader()`` when there is an ``eval_dataset``;
* the loss of ``trainer.compute_loss(model, inputs)`` -- a subclass that overrides it, label
  smoothing and ``compute_loss_func`` are honoured;
* ``gradient_accumulation_steps`` and ``max_grad_norm`` (0 or ``None``: no clipping);
* the length of the real run for the finder's budget (``train_steps``): ``max_steps``, or
  ``num_train_epochs`` times the optimizer steps of one epoch.

The model, the optimizer and the RNG states come out bitwise as they went in (the torch finder's
guarantee); an optimizer the finder had to create is dropped again, so ``trainer.train()`` builds
its own. The suggestion is then written into ``trainer.args.learning_rate`` (``write=True``), which
is where ``train()`` reads it when it builds the optimizer and the LR schedule (warmup and decay
keep their shape). With your own optimizer (``optimizers=(opt, None)``) its first param group gets the
suggestion too, and the others keep their LR ratios to it (as in the range test). A ``Trainer`` with its own LR scheduler
(``optimizers=(opt, scheduler)``) has fixed its base LRs already: it is refused when ``write`` is
true (pass ``write=False`` and build them with ``result.suggestion``).

Example::

    trainer = transformers.Trainer(model=model, args=args, train_dataset=train, data_collator=collator)
    result = lrkit.transformers.find_lr(trainer)   # trainer.args.learning_rate = result.suggestion
    trainer.train()

Several processes (``torchrun``, plain DDP): call it on every rank. ``trainer.model`` is not
wrapped in DDP until ``train()``, so the range test averages the gradients over the ranks itself
(it measures the batch of all ranks, as ``train()`` will train with), and every decision is taken
on the ranks' mean losses: every rank writes the same suggestion.

Not covered: DeepSpeed and FSDP (run the finder in a single process and pass the LR), and the
``"greedy"`` and ``"reduce_lr_on_plateau"`` scheduler types read the LR as well (they work, they
just start from the suggestion). ``fp16``/``bf16`` are not applied to the range test: it runs in
the model's own dtype, without autocast or a loss scaler.
"""
from __future__ import annotations

import math
from typing import Any

from lrkit.finder.result import FinderResult
from lrkit.integrations.torch.dist import world_size
from lrkit.integrations.torch.groups import reference_lr, set_group_lr
from lrkit.integrations.torch.trainer import find_lr as _find_lr_torch

__all__ = ["find_lr"]


def _train_steps(trainer: Any, loader: Any) -> int | None:
    """The optimizer steps ``trainer.train()`` will take (``None`` when it cannot be told)."""
    args = trainer.args
    if args.max_steps is not None and args.max_steps > 0:
        return int(args.max_steps)
    try:
        batches = len(loader)
    except TypeError:  # an IterableDataset without a length: the user must say (max_steps)
        return None
    per_epoch = max(batches // max(int(args.gradient_accumulation_steps), 1), 1)
    return max(int(math.ceil(per_epoch * float(args.num_train_epochs))), 1)


def eval_loader(trainer: Any) -> Any:
    """The validation batches the finder scores on: ``trainer.get_eval_dataloader()`` for its
    ``eval_dataset`` -- the first one when it is a dict of several (the Trainer evaluates each
    under its name) -- or ``None`` without one (or without a Trainer)."""
    evals = getattr(trainer, "eval_dataset", None)
    if evals is None:
        return None
    if isinstance(evals, dict):
        return trainer.get_eval_dataloader(next(iter(evals))) if evals else None
    return trainer.get_eval_dataloader()


def find_lr(trainer: Any, *, write: bool = True, train_steps: int | None = None,
            **kwargs: Any) -> FinderResult:
    r"""Find the LR of a Hugging Face ``Trainer`` and (by default) write it into ``trainer.args``.

    Runs :func:`lrkit.find_lr` on the trainer's model, optimizer, train dataloader (with its
    collator), ``compute_loss``, ``gradient_accumulation_steps`` and ``max_grad_norm``; see the
    module docstring. The finder's cost is at most 30% of the run's ``train_steps``.

    Args:
        trainer: a ``transformers.Trainer`` (or subclass) with a ``train_dataset``.
        write: set ``trainer.args.learning_rate`` (and the groups of an optimizer you passed in)
            to the suggestion.
        train_steps: optimizer steps of the real run; default from the ``TrainingArguments``
            (``max_steps``, else epochs times the steps of one epoch).
        kwargs: passed on to :func:`lrkit.find_lr` (``num_iter``, ``start_lr``, ``end_lr``,
            ``verify``, ``progress``, ``seed``, ``target_batch_size``, ...).

    Returns:
        The :class:`~lrkit.FinderResult`; ``result.suggestion`` is the LR written.

    Raises:
        ValueError: not a ``Trainer``, no ``train_dataset``, a keyword the ``Trainer`` decides
            (``step_fn``, ``accumulation_steps``, ...), or ``write=True`` with a scheduler of your own.

    Example::

        result = find_lr(trainer, num_iter=60)
        print(result.summary(), trainer.args.learning_rate)
    """
    import transformers

    if not isinstance(trainer, transformers.Trainer):
        raise ValueError(f"lrkit.transformers.find_lr: trainer must be a transformers.Trainer, got "
                         f"{type(trainer).__name__}; for a plain model use lrkit.find_lr(model, optimizer, ...)")
    taken = sorted(set(kwargs) & {"step_fn", "accumulation_steps", "grad_clip_norm", "val_loader", "loss_fn",
                                  "batch_size"})
    if taken:
        raise ValueError(f"lrkit.transformers.find_lr: {', '.join(taken)} come from the Trainer "
                         f"(compute_loss, TrainingArguments, eval_dataset); do not pass them")
    if trainer.train_dataset is None:
        raise ValueError("lrkit.transformers.find_lr: the Trainer has no train_dataset; pass "
                         "train_dataset=... when building it")
    if write and trainer.lr_scheduler is not None:
        raise ValueError("lrkit.transformers.find_lr: the Trainer has its own LR scheduler "
                         "(optimizers=(optimizer, scheduler)), whose base LRs are already fixed; pass write=False "
                         "and build the optimizer and scheduler with result.suggestion")
    args = trainer.args
    own_optimizer = trainer.optimizer is not None
    optimizer = trainer.optimizer if own_optimizer else trainer.create_optimizer()
    try:
        loader = trainer.get_train_dataloader()
        val_loader = eval_loader(trainer)

        def step_fn(model: Any, batch: Any) -> Any:
            return trainer.compute_loss(model, trainer._prepare_inputs(batch))

        accumulation = max(int(args.gradient_accumulation_steps), 1)
        clip = args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else None
        if train_steps is None:
            train_steps = _train_steps(trainer, loader)
        # several processes (plain DDP): trainer.model is not wrapped until train(), so the range
        # test averages the gradients over the ranks itself -- the batch of all ranks, as train() will
        world = world_size()
        kwargs.setdefault("average_gradients", world > 1)
        result = _find_lr_torch(
            trainer.model, optimizer, None, loader, val_loader=val_loader, step_fn=step_fn,
            accumulation_steps=accumulation, grad_clip_norm=clip, train_steps=train_steps,
            batch_size=int(args.per_device_train_batch_size) * accumulation * world, **kwargs)
    finally:
        if not own_optimizer:  # train() builds its own from args.learning_rate
            trainer.optimizer = None
    if write:
        _write(trainer, optimizer if own_optimizer else None, result.suggestion)
    return result


def _write(trainer: Any, optimizer: Any, lr: float) -> None:
    """``args.learning_rate = lr``; an optimizer of the user's own: its groups, ratios kept."""
    trainer.args.learning_rate = float(lr)
    if optimizer is None:
        return
    first = reference_lr([float(g["lr"]) for g in optimizer.param_groups])  # a group at LR 0 stays frozen
    for group in optimizer.param_groups:
        ratio = float(group["lr"]) / first if first is not None else 1.0
        set_group_lr(group, float(lr) * ratio)
