r"""The LR autopilot for JAX/optax: an injected-LR optimizer and one functional call per step.

::

    pilot = lrkit.jax.autopilot(loss_fn, params, optax.adamw, batches, train_steps=3000,
                                val_batches=val)
    tx = pilot.optimizer                    # optax.inject_hyperparams(optax.adamw)(...)
    opt_state = pilot.init(params)          # the LR of step 0 is set
    for step, batch in zip(range(3000), batches):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        params, opt_state = pilot.after_step(step, loss, params, opt_state, batch=batch)

:func:`autopilot` runs the finder (:func:`lrkit.jax.find_lr`, at most 30% of the run; your
``params`` are never modified) and decides the plan. :meth:`OptaxAutopilot.after_step` is pure
in the JAX sense: it returns the ``(params, opt_state)`` to go on with -- the ones you passed,
or, when the guard rolls back on ``nan``/``diverging``, the last good ones (JAX arrays are
immutable: a snapshot is a reference, it costs no copy, but it keeps the arrays alive where they
live -- up to six states' worth on the accelerator; ``storage="disk"`` moves them to files, and a
warning on the first snapshot says when they would take more than half of the device's free
memory) -- with the LR of the next step written
into ``opt_state.hyperparams["learning_rate"]`` (a new state; nothing is mutated). Pass
``val_loss=`` when you validate: a stalled validation loss halves the LR. Every intervention is
logged to ``lrkit.autopilot`` and kept in :attr:`OptaxAutopilot.events`.

**A model with state** (Flax's BatchNorm ``batch_stats``): pass ``model_state=`` to
:func:`autopilot` (the finder then calls ``loss_fn(params, model_state, batch, train) -> (loss,
new_model_state)``, see :class:`lrkit.jax.OptaxTrainer`), to :meth:`~OptaxAutopilot.init` and to
every :meth:`~OptaxAutopilot.after_step`, which then returns ``(params, opt_state, model_state)``:
a rollback puts back the running averages the restored params were trained with.

**A network that dies.** The loss function hides the model's outputs; give ``outputs_fn(params,
batch)`` (e.g. ``lambda p, b: model.apply(p, b[0])``) and pass each step's ``batch=`` to
:meth:`~OptaxAutopilot.after_step`: the spread of the outputs over the batch's examples
(:func:`lrkit.collapse.sampled_spread`) is then measured on the first step, every
``check_outputs_every`` steps and on the first step after a rollback, and a run whose outputs stop
depending on its inputs is rolled back (:mod:`lrkit.doctor.signs.dead`). The finder uses it too,
to reject candidate LRs that leave a dead network.

**Checkpoints.** ``pilot.state_dict()`` (plain JSON types) resumes with
``lrkit.jax.autopilot(..., resume=state)``: no second finder run, the same schedule, the same
guard state; go on from step ``pilot.next_step``.

**Gradient accumulation** (``optimizer_factory=lambda lr: optax.MultiSteps(optax.adamw(lr),
every_k_schedule=k)``): call :meth:`~OptaxAutopilot.after_step` after every micro-batch, as
above; lrkit counts optimizer updates (:mod:`lrkit.integrations.jax.accumulation`): ``train_steps``
is the run's number of updates (default ``len(batches) // k``), and the guard sees one step per
update, with the mean loss of its ``k`` micro-batches (the ``step`` you pass is then not read:
:attr:`OptaxAutopilot.next_step` counts the updates; ``val_loss``, ``metrics`` and ``batch`` given on
a micro-batch go with the update it belongs to). Snapshots and rollbacks fall between updates.

**Flax NNX** (a stateful model trained with ``nnx.Optimizer``): the finder takes the model's
variables as pytrees (``graphdef, params, rest = nnx.split(model, nnx.Param, ...)`` and a loss that
merges them, as for :func:`lrkit.jax.find_lr`); then train the model itself::

    optimizer = nnx.Optimizer(model, pilot.optimizer, wrt=nnx.Param)
    pilot.init_nnx(model, optimizer)                       # the LR of step 0
    for step, batch in enumerate(batches):
        loss = train_step(model, optimizer, batch)         # nnx.jit: grads, optimizer.update(model, grads)
        pilot.after_nnx_step(step, loss, model, optimizer)  # a rollback is written back into both

Refused with the reason: a learning-rate-free or Schedule-Free optimizer factory, an unknown run
length (no ``train_steps`` and batches without ``len()``).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Mapping

import jax.numpy as jnp
import numpy as np
import optax

from lrkit.autopilot.pilot import Autopilot, AutopilotEvent, check_storage
from lrkit.collapse import OUTPUT_SPREAD, check_every_arg
from lrkit.autopilot.plan import AutopilotError, AutopilotPlan, check_optimizer, make_plan, resolve_train_steps
from lrkit.integrations.jax.accumulation import accumulates, as_transformation, micro_batches_per_update, update_completed
from lrkit.integrations.jax.trainer import jit_cached, find_lr_optax, outputs_spread
from lrkit.scaling import FAMILIES, optimizer_family
from lrkit.schedules.base import Schedule

__all__ = ["OptaxAutopilot", "autopilot"]


class _State:
    """The guard's view: the latest ``(params, opt_state)``, or ``(params, opt_state, model_state)``
    (references; JAX arrays are immutable)."""

    def __init__(self) -> None:
        self.current: Any = None

    def memory_available(self) -> int | None:
        """Free bytes of the accelerator the state lives on (where the guard's snapshots stay in
        memory), or ``None`` on the CPU or where the device does not say (the guard then reads the
        host's)."""
        import jax

        devices = {d for x in jax.tree_util.tree_leaves(self.current) if isinstance(x, jax.Array)
                   for d in x.devices() if d.platform != "cpu"}
        for d in devices:
            stats = d.memory_stats() or {}
            if "bytes_limit" in stats and "bytes_in_use" in stats:
                return int(stats["bytes_limit"]) - int(stats["bytes_in_use"])
        return None

    def snapshot(self) -> Any:
        return self.current

    def restore(self, state: Any) -> None:
        self.current = state


class OptaxAutopilot:
    """What :func:`autopilot` returns (see the module docstring).

    Attributes:
        optimizer: the ``optax.GradientTransformation`` to train with (LR injected).
        finder: the finder's result (``None`` after a resume).
    """

    def __init__(self, pilot: Autopilot, factory: Any, *, finder: Any = None, next_step: int = 0,
                 outputs_fn: Callable[..., Any] | None = None, check_outputs_every: int = 25) -> None:
        self.pilot, self.finder = pilot, finder
        if isinstance(factory(pilot.plan.peak_lr), optax.MultiSteps):
            def injectable(learning_rate):  # inject_hyperparams reads this signature
                return as_transformation(factory(learning_rate))
        else:
            injectable = factory
        self.optimizer = optax.inject_hyperparams(injectable)(learning_rate=pilot.plan.peak_lr)
        self._pending: dict[str, Any] = {"losses": []}  # the micro-batches of the update under way
        self._state = _State()
        self._attached = False
        self.next_step = int(next_step)
        self._outputs = None if outputs_fn is None or not check_outputs_every else jit_cached(outputs_fn)
        self._every = int(check_outputs_every)
        self._measure_next = True  # the first step, and the first after a rollback
        self._told_no_batch = False

    @property
    def plan(self) -> AutopilotPlan:
        return self.pilot.plan

    @property
    def events(self) -> list[AutopilotEvent]:
        return self.pilot.events

    def lr(self, step: int) -> float:
        """The LR of optimizer step ``step`` with every adjustment so far."""
        return self.pilot.lr(step)

    def with_lr(self, opt_state: Any, step: int) -> Any:
        """``opt_state`` with the LR of step ``step`` (a new state; the old one is untouched)."""
        hp = getattr(opt_state, "hyperparams", None)
        if not isinstance(hp, Mapping) or "learning_rate" not in hp:
            raise AutopilotError("OptaxAutopilot: opt_state must be the state of pilot.optimizer (an "
                                 f"optax.inject_hyperparams state), got {type(opt_state).__name__}")
        old = hp["learning_rate"]
        return opt_state._replace(hyperparams={**hp, "learning_rate": jnp.asarray(self.pilot.lr(step),
                                                                                    dtype=jnp.asarray(old).dtype)})

    def init(self, params: Any, model_state: Any = None) -> Any:
        """``pilot.optimizer.init(params)`` with the LR of :attr:`next_step`; starts the guard (from
        ``model_state`` too, for a model with state: then pass it to every :meth:`after_step`)."""
        opt_state = self.with_lr(self.optimizer.init(params), self.next_step)
        self._start((params, opt_state) if model_state is None else (params, opt_state, model_state))
        return opt_state

    def _start(self, current: tuple[Any, ...]) -> None:
        if not self._attached:
            self._state.current = current
            self.pilot.attach(self._state)
            self._attached = True

    def after_step(self, step: int, loss: Any, params: Any, opt_state: Any, *, val_loss: Any = None,
                   grad_norm: Any = None, metrics: Mapping[str, Any] | None = None,
                   batch: Any = None, model_state: Any = None) -> tuple[Any, ...]:
        """Report optimizer step ``step`` (its loss); return the ``(params, opt_state)`` to go on with,
        or ``(params, opt_state, model_state)`` when ``model_state`` is given.

        ``metrics``: validation metrics of this step. ``batch``: the step's batch, on which
        ``outputs_fn`` measures the outputs' spread when it is due (see the module docstring;
        without ``outputs_fn`` you may pass ``{"output_spread": lrkit.collapse.sampled_spread(logits)}``
        in ``metrics`` yourself). ``model_state``: the model's state outside the params after this
        step (Flax's ``batch_stats``): a rollback restores it with the params it was trained with,
        and ``outputs_fn`` is called as ``outputs_fn(params, model_state, batch)``."""
        current = (params, opt_state) if model_state is None else (params, opt_state, model_state)
        self._start(current)  # a resumed run may skip init()
        report = self._per_update(opt_state, step, loss, val_loss, grad_norm, metrics, batch)
        if report is None:
            return current  # the LR of this update is already in opt_state
        step, loss, val_loss, grad_norm, metrics, batch = report
        spread = self._spread(int(step), lambda: (current[0], *current[2:]), batch)
        restored = self._observe(step, current, loss, val_loss, grad_norm, metrics, spread)
        if restored[0] is not params:  # rolled back: look at the restored model next step
            self._measure_next = True
        if len(restored) != len(current):
            raise AutopilotError("OptaxAutopilot.after_step: model_state was given on some steps and not on "
                                 "others (the guard restored a snapshot without one, or with one where this "
                                 "step has none); pass it to init() and to every after_step()")
        self.next_step = int(step) + 1
        return (restored[0], self.with_lr(restored[1], self.next_step), *restored[2:])

    # -- Flax NNX: a stateful model and nnx.Optimizer -------------------------------------------
    def init_nnx(self, model: Any, optimizer: Any) -> None:
        """Flax NNX: start with ``optimizer = nnx.Optimizer(model, pilot.optimizer, wrt=nnx.Param)``
        (see :meth:`after_nnx_step`): sets its LR to the one of :attr:`next_step` and starts the guard."""
        self._start(_nnx_state(model, optimizer))
        _set_nnx_lr(optimizer, self.pilot.lr(self.next_step))

    def after_nnx_step(self, step: int, loss: Any, model: Any, optimizer: Any, *, val_loss: Any = None,
                       grad_norm: Any = None, metrics: Mapping[str, Any] | None = None, batch: Any = None) -> None:
        """Flax NNX's stateful training: report optimizer step ``step`` after ``optimizer.update(model,
        grads)``. On a rollback the last good state (every variable of ``model``, BatchNorm's
        statistics and RNG counts included, and of ``optimizer``) is written back into both with
        ``nnx.update``; the LR of the next step is set in ``optimizer``. ``metrics``: as for
        :meth:`after_step`. ``batch``: the step's batch, on which the ``outputs_fn`` given to
        :func:`autopilot` measures the outputs' spread when it is due (a dead network is rolled
        back); it is called as ``outputs_fn(params, rest, batch)`` with ``(params, rest)`` the
        model's ``nnx.split(model, nnx.Param, ...)`` -- the view the finder's loss function takes --
        and must not change the model (merge a copy, in eval mode). With ``optax.MultiSteps`` call it
        after every micro-batch: as :meth:`after_step`, it watches one step per update."""
        current = _nnx_state(model, optimizer)
        self._start(current)
        report = self._per_update(getattr(optimizer, "opt_state", None), step, loss, val_loss, grad_norm, metrics,
                                  batch)
        if report is None:
            return  # the LR of this update is already in the optimizer
        step, loss, val_loss, grad_norm, metrics, batch = report
        spread = self._spread(int(step), lambda: _nnx_split(model), batch)
        restored = self._observe(step, current, loss, val_loss, grad_norm, metrics, spread)
        if restored is not current:
            from flax import nnx

            nnx.update(model, restored[0])
            nnx.update(optimizer, restored[1])
            self._measure_next = True  # look at the restored model next step
        self.next_step = int(step) + 1
        _set_nnx_lr(optimizer, self.pilot.lr(self.next_step))

    def _observe(self, step: int, current: tuple[Any, ...], loss: Any, val_loss: Any, grad_norm: Any,
                 metrics: Mapping[str, Any] | None, spread: float | None = None) -> tuple[Any, ...]:
        """Give the guard one step's report with ``current`` as the state it may snapshot; return the
        state to go on with (``current``, or the snapshot a rollback restored)."""
        self._state.current = current
        merged = {} if metrics is None else {k: float(v) for k, v in metrics.items()}
        if spread is not None:
            merged[OUTPUT_SPREAD] = spread
        self.pilot.observe(int(step), float(loss), val_loss=None if val_loss is None else float(val_loss),
                           grad_norm=None if grad_norm is None else float(grad_norm), metrics=merged or None)
        return self._state.current

    def _per_update(self, opt_state: Any, step: int, loss: Any, val_loss: Any, grad_norm: Any, metrics: Any,
                    batch: Any) -> tuple[Any, ...] | None:
        """The report of the optimizer step just made, ``(step, loss, val_loss, grad_norm, metrics,
        batch)``: as given; with ``optax.MultiSteps`` in ``opt_state`` (one step per update, see the
        module docstring) each micro-batch's is kept, ``None`` is returned until the update is made,
        and then the update's (at :attr:`next_step`)."""
        if not accumulates(opt_state):
            return step, loss, val_loss, grad_norm, metrics, batch
        self._keep(loss, val_loss, grad_norm, metrics, batch)
        if not update_completed(opt_state):
            return None
        return (self.next_step, *self._take())

    def _keep(self, loss: Any, val_loss: Any, grad_norm: Any, metrics: Any, batch: Any) -> None:
        """Keep one micro-batch's report until its update is made."""
        pending = self._pending
        pending["losses"].append(float(loss))
        for key, value in (("val_loss", val_loss), ("grad_norm", grad_norm), ("metrics", metrics), ("batch", batch)):
            if value is not None:
                pending[key] = value

    def _take(self) -> tuple[Any, ...]:
        """What the update just made reports -- the mean loss of its micro-batches, the latest
        validation loss, gradient norm, metrics and batch given -- and start the next one."""
        pending, self._pending = self._pending, {"losses": []}
        return (float(np.mean(pending["losses"])), pending.get("val_loss"), pending.get("grad_norm"),
                pending.get("metrics"), pending.get("batch"))

    def _spread(self, step: int, args: Callable[[], tuple[Any, ...]], batch: Any) -> float | None:
        """The outputs' spread on ``batch`` when a measurement is due (else ``None``): ``outputs_fn``
        called on ``args()`` (the params, and the model state if any) and the batch."""
        if self._outputs is None or not (self._measure_next or step % self._every == 0):
            return None
        if batch is None:
            if not self._told_no_batch:
                self._told_no_batch = True
                self.pilot.logger.warning(
                    "OptaxAutopilot: outputs_fn was given but no batch= came with the step; pass each step's "
                    "batch to have a dead network (every input the same output) rolled back")
            return None
        self._measure_next = False
        return outputs_spread(self._outputs, *args(), batch)

    def state_dict(self) -> dict[str, Any]:
        """``{"next_step": k, "autopilot": ...}`` (plain JSON types), for ``autopilot(..., resume=)``."""
        return {"next_step": self.next_step, "autopilot": self.pilot.state_dict()}

    def report(self) -> str:
        return self.pilot.report()

    def close(self) -> None:
        """The run is over: drop the guard's snapshots (``storage="disk"``: delete their files).
        Idempotent."""
        self.pilot.close()


def _nnx_state(model: Any, optimizer: Any) -> tuple[Any, Any]:
    """The variables of an NNX model and optimizer as pytrees of arrays, in containers of their own
    (``nnx.state`` hands out the live variables, which training updates in place; the arrays
    themselves are immutable, so the copy is of references, not of memory)."""
    import jax
    from flax import nnx

    return tuple(jax.tree_util.tree_map(lambda x: x, nnx.state(obj)) for obj in (model, optimizer))


def _nnx_split(model: Any) -> tuple[Any, Any]:
    """``(params, rest)`` of ``nnx.split(model, nnx.Param, ...)``: the functional view of an NNX model."""
    from flax import nnx

    _, params, rest = nnx.split(model, nnx.Param, ...)
    return params, rest


def _set_nnx_lr(optimizer: Any, lr: float) -> None:
    hp = getattr(getattr(optimizer, "opt_state", None), "hyperparams", None)
    if not isinstance(hp, Mapping) or "learning_rate" not in hp:
        raise AutopilotError("OptaxAutopilot: the NNX optimizer must be built on pilot.optimizer: "
                             "nnx.Optimizer(model, pilot.optimizer, wrt=nnx.Param)")
    var = hp["learning_rate"]
    var[...] = jnp.asarray(lr, dtype=jnp.asarray(var[...]).dtype)


def _factory_name(factory: Any) -> str:
    while hasattr(factory, "func"):  # functools.partial
        factory = factory.func
    return getattr(factory, "__name__", type(factory).__name__)


def autopilot(
    loss_fn: Callable[..., Any],
    params: Any,
    optimizer_factory: Any,
    batches: Iterable[Any],
    *,
    train_steps: int | None = None,
    epochs: int | None = None,
    val_batches: Iterable[Any] | None = None,
    has_aux: bool = False,
    shape: Schedule | None = None,
    peak_lr: float | None = None,
    guard: bool = True,
    plateau: bool = True,
    restart_on_overfit: bool = True,
    resume: Mapping[str, Any] | None = None,
    progress: bool = False,
    logger: logging.Logger | None = None,
    seed: int = 0,
    outputs_fn: Callable[..., Any] | None = None,
    check_outputs_every: int = 25,
    storage: str = "memory",
    storage_dir: Any = None,
    family: str | None = None,
    model_state: Any = None,
) -> OptaxAutopilot:
    """Find the LR, plan the schedule and guard a JAX/optax run (see the module docstring).

    Args:
        loss_fn, params, batches, val_batches, has_aux: as for :func:`lrkit.jax.find_lr`.
        optimizer_factory: an optax factory ``lr -> GradientTransformation`` (``optax.adamw``,
            ``functools.partial(optax.sgd, momentum=0.9)``); the autopilot injects its LR.
        train_steps: optimizer steps of the whole run (default ``len(batches)``, if it has one).
        epochs: or the passes over ``batches`` (a sized one): ``epochs * len(batches)`` steps.
        shape, peak_lr, guard, plateau, restart_on_overfit: as for :func:`lrkit.torch.autopilot`.
        resume: a ``pilot.state_dict()``: no finder run, the same plan and state.
        progress: show the finder's progress bar.
        outputs_fn: optional ``outputs_fn(params, batch) -> outputs`` (the model's outputs): the
            finder rejects LRs that leave a dead network, and ``after_step(..., batch=)`` measures
            the outputs every ``check_outputs_every`` steps (0: never) so that the guard rolls a
            dying run back (see the module docstring).
        storage, storage_dir: where the guard keeps its snapshots, ``"memory"`` (references to the
            arrays) or ``"disk"`` (see :class:`lrkit.autopilot.Autopilot`); :meth:`OptaxAutopilot.close`
            deletes them.
        family: the optimizer family (one of :data:`lrkit.scaling.FAMILIES`), for a factory whose
            name does not say it (a ``lambda`` or a chain: ``"unknown"`` otherwise, with a warning);
            default: read from the factory (a ``partial``'s bound momentum included).
        model_state: the model's state outside the params (Flax's ``{"batch_stats": ...}``), for
            the finder (see the module docstring); never modified.

    Raises:
        AutopilotError: a learning-rate-free factory, an unknown run length, a bad argument.
        NotTrainable: the finder's curve is flat.
    """
    if not callable(optimizer_factory) or isinstance(optimizer_factory, optax.GradientTransformation):
        raise AutopilotError("autopilot: optimizer_factory must be an optax factory such as optax.adamw (the "
                             f"autopilot injects the LR), got {type(optimizer_factory).__name__}")
    check_every_arg("check_outputs_every", check_outputs_every)
    if outputs_fn is not None and not callable(outputs_fn):
        raise AutopilotError("autopilot: outputs_fn must be None or callable as outputs_fn(params, batch), got "
                             f"{type(outputs_fn).__name__}")
    check_storage(storage, storage_dir, "autopilot")
    named = check_optimizer(_factory_name(optimizer_factory))  # refuses a learning-rate-free one by its name
    if family is None:
        family = optimizer_family(optimizer_factory)  # a partial's bound momentum too (optax.sgd is "sgd" by name)
        family = named if family == "unknown" else family
    elif family not in FAMILIES:
        raise AutopilotError(f"autopilot: family must be None (read it from the factory) or one of "
                             f"{', '.join(FAMILIES)}, got {family!r}")
    else:
        check_optimizer(family)  # family="lr_free" is refused as its factory would be
    if resume is not None:
        if not isinstance(resume, Mapping) or set(resume) != {"next_step", "autopilot"}:
            raise AutopilotError("autopilot: resume must be the dict of pilot.state_dict() saved with your checkpoint")
        pilot = Autopilot.from_state_dict(resume["autopilot"], logger=logger, storage=storage,
                                          storage_dir=storage_dir)
        return OptaxAutopilot(pilot, optimizer_factory, next_step=int(resume["next_step"]), outputs_fn=outputs_fn,
                              check_outputs_every=check_outputs_every)
    n = None
    if train_steps is None:
        try:
            n = len(batches)  # type: ignore[arg-type]
        except TypeError:
            n = None
    if n is not None:  # optax.MultiSteps: one step is k micro-batches
        n = max(1, n // micro_batches_per_update(optimizer_factory(1e-3), params))
    if epochs is None:
        steps = resolve_train_steps(train_steps if train_steps is not None else n)
    else:
        steps = resolve_train_steps(train_steps, epochs=epochs, steps_per_epoch=n)

    result = find_lr_optax(loss_fn, params, optimizer_factory, batches, val_batches=val_batches, has_aux=has_aux,
                           train_steps=steps, progress=progress, family=None if family == "unknown" else family,
                           seed=seed, outputs_fn=outputs_fn, model_state=model_state)
    family = result.details.get("family", family)  # unknown by name: the finder reads its state's hyperparameters
    plan = make_plan(result, family=family, train_steps=steps, shape=shape, peak_lr=peak_lr)
    pilot = Autopilot(plan, guard=guard, plateau=plateau, logger=logger, storage=storage, storage_dir=storage_dir,
                      restart_on_overfit=restart_on_overfit)
    pilot.logger.info("%s", plan.summary())
    return OptaxAutopilot(pilot, optimizer_factory, finder=result, outputs_fn=outputs_fn,
                          check_outputs_every=check_outputs_every)
