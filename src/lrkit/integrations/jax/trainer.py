"""JAX/optax adapter of the LR finder: :class:`OptaxTrainer` (the Trainer protocol) and :func:`find_lr_optax`.

The adapter only translates: it runs one jitted optax update at a given learning rate and
snapshots / restores the training state. The range test and the suggestion live in the NumPy core
(:func:`lrkit.finder.range_test.find`).

The step
--------
With parameters :math:`\\theta_t`, optimizer state :math:`s_t`, batch :math:`b_t` and learning
rate :math:`\\eta_t`, one step is

.. math::

    \\ell_t,\\ g_t = \\mathrm{value\\_and\\_grad}(\\ell)(\\theta_t, b_t),\\qquad
    u_t,\\ s_{t+1} = \\mathrm{update}(g_t,\\ s_t[\\eta \\leftarrow \\eta_t],\\ \\theta_t),\\qquad
    \\theta_{t+1} = \\theta_t + u_t

and returns :math:`\\ell_t` as a float. It is one ``jax.jit`` function in which :math:`\\eta_t` is a
traced scalar argument, so a whole range test compiles the step once (once more per new batch
shape or dtype: drop a smaller last batch). The compiled step is cached per
``(loss_fn, optimizer, has_aux)``: calling :func:`find_lr_optax` again with the same objects does
not compile again (as with ``jax.jit`` itself, a later change to a global or closure variable that
``loss_fn`` or a factory reads is not seen; pass a new function instead). Nothing is donated, so
the caller's arrays stay valid.

Where the learning rate lives
-----------------------------
optax keeps hyperparameters out of the state unless the optimizer is built with
``optax.inject_hyperparams``; then the state holds ``hyperparams["learning_rate"]`` (an
``optax.InjectStatefulHyperparamsState``) and the step overwrites it with :math:`\\eta_t`.
``optimizer_factory`` is therefore one of

* a **factory** ``lr -> GradientTransformation`` — ``optax.adam``, ``functools.partial(optax.sgd,
  momentum=0.9)``, ``lambda lr: optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr))``.
  lrkit wraps it with ``optax.inject_hyperparams`` itself (unless ``factory(lr)`` already injects
  its LR). The simplest choice; and the optimizer family (for the default range) is read from the
  function's name, so ``optax.adam`` gets Adam's range while a ``lambda`` gets the generic one;
* a **GradientTransformation built with inject_hyperparams** —
  ``optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)``, possibly inside ``optax.chain``
  or ``optax.multi_transform``. Use this form to range-test the optimizer you already train with
  (pass its ``opt_state`` to :class:`OptaxTrainer` to start from a warm state). When several
  injected learning rates are found (``multi_transform`` groups), all are ramped and keep their
  ratios to the first one (in pytree order), like PyTorch's param groups.

**Gradient accumulation**: either form may be (or return) an ``optax.MultiSteps`` --
``lambda lr: optax.MultiSteps(optax.adam(lr), every_k_schedule=4)`` -- and a step is then one
optimizer update, its ``k`` micro-batches in a row (their mean loss), as for PyTorch's
``accumulation_steps``: ``train_steps`` counts updates, and the batch size is the update's
(:mod:`lrkit.integrations.jax.accumulation`).

A plain ``optax.adam(1e-3)`` has no LR in its state and is refused; so is a learning rate given as
a schedule (``inject_hyperparams`` recomputes it from the step count at every update).

Batches
-------
``batches`` yields pytrees of arrays (NumPy or JAX), passed to ``loss_fn(params, batch)`` as they
are; they are cycled when the test is longer. A sequence (list or tuple) is indexed, so a restore
puts the position back exactly. Any other iterable (a generator, a ``tf.data`` or PyTorch loader)
is read lazily and every batch read is kept in memory so that a restore can replay it: the cost
is at most one pass over the data, and about ``num_iter`` batches for the usual test (100 batches
of 128 digits images is 3 MB; for large inputs pass a list of the batches you want used, or a
shorter iterable, which is then cycled). A re-iterable loader is read once: the batches repeat in
the order of its first pass. ``val_batches`` is read the same way (at most ``max_val_batches``).
JAX has no global RNG: a loss that needs randomness (dropout) should take its key from the batch.

A model with state outside its params (Flax's BatchNorm ``batch_stats``) passes it as
``model_state``: then ``loss_fn(params, model_state, batch, train) -> (loss, new_model_state)``;
training steps go on with the state it returns (``train=True``), evaluations call it with
``train=False``, and snapshots hold the state with the params.

State
-----
:meth:`OptaxTrainer.snapshot` holds ``(params, opt_state, data position, NumPy and random RNG
states, model state)``; JAX arrays are immutable, so this is a few references, not a copy. The caller's
``params`` and ``opt_state`` are never modified: :func:`find_lr_optax` returns only the
:class:`~lrkit.finder.result.FinderResult`, and after the test (normal end, divergence, an
exception, ``KeyboardInterrupt``) the trainer holds the very arrays it started from.

Example:
    >>> import jax.numpy as jnp, numpy as np, optax
    >>> x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    >>> y = x @ np.array([1.0, -2.0, 0.5], dtype=np.float32)
    >>> batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    >>> def loss_fn(params, batch):
    ...     xb, yb = batch
    ...     return jnp.mean((xb @ params["w"] - yb) ** 2)
    >>> t = OptaxTrainer(loss_fn, {"w": jnp.zeros(3)}, optax.sgd, batches)
    >>> s = t.snapshot(); losses = [t.step(0.1) for _ in range(20)]; t.restore(s)
    >>> losses[-1] < losses[0], float(t.params["w"].sum()), t.family
    (True, 0.0, 'sgd')
"""
from __future__ import annotations

import collections.abc
import functools
import math
import random
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lrkit import scaling
from lrkit.collapse import sampled_spread
from lrkit.finder.range_test import find, plan_budget, plan_verify_budget
from lrkit.finder.regime import trainer_shape
from lrkit.finder.result import FinderResult
from lrkit.finder.search import FirstBatches
from lrkit.integrations._progress import progress_context, watched
from lrkit.integrations.jax.accumulation import (
    MAX_MICRO_BATCHES, accumulates, as_transformation, micro_batches_per_update, update_completed,
)
from lrkit.integrations.jax.inject import (
    CACHE_SIZE, cached_factory, call_factory, check_slots, factory_name, infer_family, lr_slots, with_lr,
)

__all__ = ["OptaxTrainer", "OptaxSnapshot", "find_lr_optax"]


def _call_form(stateful: bool) -> str:
    """How ``loss_fn`` is called, for messages."""
    return "loss_fn(params, model_state, batch, train)" if stateful else "loss_fn(params, batch)"


def _checked_loss(loss_fn: Callable, has_aux: bool, stateful: bool = False) -> Callable:
    """``wrapped(params, batch, model_state, train) -> (scalar loss, new model_state)``.

    Without a model state ``loss_fn(params, batch)`` returns the loss (``(loss, aux)`` with
    ``has_aux``; ``aux`` is dropped) and the state passes through (``None``); with one,
    ``loss_fn(params, model_state, batch, train)`` returns ``(loss, new_model_state)``. Shape errors
    are raised while tracing."""
    call = _call_form(stateful)

    def wrapped(params, batch, model_state, train):
        if stateful:
            out = loss_fn(params, model_state, batch, train)
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise ValueError(
                    f"with model_state, {call} must return (loss, new_model_state), got {type(out).__name__}"
                    + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
                )
            loss, new_state = out
            got, expected = jax.tree_util.tree_structure(new_state), jax.tree_util.tree_structure(model_state)
            if got != expected:
                raise ValueError(f"{call} returned a new model_state of another structure: {got} != {expected} "
                                 "(return the state it was given when train is False)")
        elif has_aux:
            out = loss_fn(params, batch)
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise ValueError(
                    f"with has_aux=True, loss_fn(params, batch) must return (loss, aux), got {type(out).__name__}"
                    + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
                )
            loss, new_state = out[0], model_state
        else:
            out = loss_fn(params, batch)
            if isinstance(out, (tuple, list)):
                raise ValueError(
                    f"loss_fn(params, batch) returned a {type(out).__name__} of length {len(out)}; it must "
                    "return a scalar loss, or pass has_aux=True if it returns (loss, aux)"
                )
            loss, new_state = out, model_state
        loss = jnp.asarray(loss)
        if loss.size != 1:
            raise ValueError(
                f"{call} must return a scalar loss, got an array of shape {tuple(loss.shape)}; reduce it (e.g. .mean())"
            )
        if not jnp.issubdtype(loss.dtype, jnp.floating):
            raise ValueError(f"{call} must return a floating-point loss, got dtype {loss.dtype}")
        return loss.reshape(()), new_state

    return wrapped


def _build_step(loss_fn: Callable, update: Callable, has_aux: bool, ratios: tuple[float, ...],
                stateful: bool = False) -> Callable:
    checked = _checked_loss(loss_fn, has_aux, stateful)
    value_and_grad = jax.value_and_grad(lambda p, b, s: checked(p, b, s, True), has_aux=True)

    def step(params, opt_state, model_state, batch, lr):
        opt_state = with_lr(opt_state, lr, ratios)
        (loss, model_state), grads = value_and_grad(params, batch, model_state)
        updates, opt_state = update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, model_state, loss

    return jax.jit(step)


def _build_eval(loss_fn: Callable, has_aux: bool, stateful: bool = False) -> Callable:
    checked = _checked_loss(loss_fn, has_aux, stateful)
    return jax.jit(lambda params, model_state, batch: checked(params, batch, model_state, False)[0])


def jit_cached(fn: Callable) -> Callable:
    """``jax.jit(fn)``, cached per function when it is hashable (compiled once per shape)."""
    return _cached_jit(fn) if _hashable(fn) else jax.jit(fn)


def outputs_spread(outputs_fn: Callable, *args: Any) -> float | None:
    """:func:`lrkit.collapse.sampled_spread` of the first array leaf of ``outputs_fn(*args)``
    (``(params, batch)``, or ``(params, model_state, batch)`` for a model with state)."""
    leaves = jax.tree_util.tree_leaves(outputs_fn(*args))
    return sampled_spread(leaves[0]) if leaves else None


_cached_jit = functools.lru_cache(maxsize=CACHE_SIZE)(jax.jit)
_cached_step = functools.lru_cache(maxsize=CACHE_SIZE)(_build_step)
_cached_eval = functools.lru_cache(maxsize=CACHE_SIZE)(_build_eval)


def _hashable(*objs: Any) -> bool:
    try:
        hash(objs)
    except TypeError:  # e.g. a bound method of an unhashable object: compiled without the cache
        return False
    return True


# -- batches -----------------------------------------------------------------------------------
class _Batches:
    """Batch number ``i`` of a sequence or an iterable, cycled; iterables are cached as they are read."""

    def __init__(self, batches: Any, name: str, limit: int | None = None) -> None:
        if isinstance(batches, (np.ndarray, jax.Array)):
            raise TypeError(
                f"{name} must be an iterable of batches (a list or a generator), got an array of shape "
                f"{tuple(batches.shape)}; split it into batches, e.g. list(zip(np.split(x, k), np.split(y, k)))"
            )
        if isinstance(batches, (str, bytes, dict)) or not isinstance(batches, collections.abc.Iterable):
            raise TypeError(
                f"{name} must be an iterable of batches (a list or a generator), got {type(batches).__name__}"
            )
        self.name = name
        self.limit = limit
        if isinstance(batches, collections.abc.Sequence):
            if len(batches) == 0:
                raise ValueError(f"{name} is empty (len({name}) == 0)")
            self._cache: Any = batches
            self._source: Any = None
            self._done = True
        else:
            self._cache = []
            self._source = batches
            self._done = False
        self._iter: Any = None
        self._failure: BaseException | None = None

    def _read_one(self) -> None:
        if self._failure is not None:
            raise RuntimeError(
                f"{self.name} raised {type(self._failure).__name__} earlier (after {len(self._cache)} batches) "
                "and cannot be read further"
            ) from self._failure
        if self._iter is None:
            self._iter = iter(self._source)
        try:
            self._cache.append(next(self._iter))
        except StopIteration:
            self._done = True
        except BaseException as exc:  # noqa: BLE001 - remembered, then re-raised unchanged
            self._failure = exc
            raise
        if self.limit is not None and len(self._cache) >= self.limit:
            self._done = True

    def __getitem__(self, i: int) -> Any:
        while not self._done and i >= len(self._cache):
            self._read_one()
        if len(self._cache) == 0:
            raise ValueError(f"{self.name} is empty (it yielded no batch)")
        if self.limit is not None:
            return self._cache[i % min(len(self._cache), self.limit)]
        return self._cache[i % len(self._cache)]

    def all(self) -> list[Any]:
        """Every batch (at most ``limit``), reading the source to its end."""
        self[0]
        while not self._done:
            self._read_one()
        n = len(self._cache) if self.limit is None else min(len(self._cache), self.limit)
        return [self._cache[i] for i in range(n)]


def _leading_dim(batch: Any) -> int | None:
    """The common first dimension of every array in ``batch``, if there is one."""
    dims = {int(np.shape(leaf)[0]) if np.ndim(leaf) > 0 else None for leaf in jax.tree_util.tree_leaves(batch)}
    if len(dims) == 1:
        (dim,) = dims
        return dim
    return None


# -- the trainer -------------------------------------------------------------------------------
@dataclass(frozen=True)
class OptaxSnapshot:
    """Everything :meth:`OptaxTrainer.step` changes (references: JAX arrays are immutable).

    Attributes:
        params: the parameter pytree.
        opt_state: the optax state.
        position: how many training batches had been consumed.
        numpy_rng: ``np.random.get_state()``.
        python_rng: ``random.getstate()``.
        model_state: the model's state outside the params (``None`` without one).
    """

    params: Any
    opt_state: Any
    position: int
    numpy_rng: Any
    python_rng: Any
    model_state: Any = None


class OptaxTrainer:
    """The :class:`~lrkit.finder.trainer.Trainer` protocol for a JAX loss and an optax optimizer.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar`` (or ``(scalar, aux)`` with ``has_aux``); traced
            by ``jax.jit``, so it must be a JAX function of its arguments.
        params: the parameter pytree (arrays of a floating dtype); never modified.
        optimizer_factory: a factory ``lr -> optax.GradientTransformation`` (``optax.adam``), or a
            transformation built with ``optax.inject_hyperparams`` (see the module docstring).
        batches: training batches, cycled (see the module docstring).
        val_batches: optional validation batches for :meth:`evaluate`.
        has_aux: ``loss_fn`` returns ``(loss, aux)``; ``aux`` is ignored.
        model_state: the model's state that is not trained by gradients but changes as it trains,
            e.g. Flax's ``batch_stats`` (BatchNorm's running averages); never modified. With it
            ``loss_fn(params, model_state, batch, train) -> (loss, new_model_state)``: training
            steps call it with ``train=True`` and go on with the state it returns; evaluations
            with ``train=False`` (it should then use the running averages and return the state
            as given); ``outputs_fn`` is called as ``outputs_fn(params, model_state, batch)``.
        opt_state: the optimizer state to start from (only with a transformation, e.g. your
            training run's current state); default ``optimizer.init(params)``.
        max_val_batches: at most this many validation batches per :meth:`evaluate` (>= 1), or None.
        outputs_fn: optional ``outputs_fn(params, batch) -> outputs`` (the model's outputs on a
            batch, e.g. ``lambda p, b: model.apply(p, b[0])``; a pytree's first leaf is read): with
            it, :meth:`output_spread` tells the finder which candidate LRs left a dead network
            (every input the same output, :mod:`lrkit.collapse`), as the PyTorch finder does.

    Attributes:
        params, opt_state: the current training state (the starting one again after a restore).
        optimizer: the ``GradientTransformation`` actually stepped.
        family: the optimizer family inferred for :mod:`lrkit.scaling` (``"unknown"`` if the
            factory's name says nothing).

    Example:
        >>> import jax.numpy as jnp, optax
        >>> loss_fn = lambda p, b: jnp.sum((p["w"] - b) ** 2)
        >>> t = OptaxTrainer(loss_fn, {"w": jnp.zeros(2)}, optax.adam, [jnp.ones(2)])
        >>> s = t.snapshot(); loss = t.step(0.1); t.restore(s)
        >>> loss, t.family
        (2.0, 'adam')
    """

    def __init__(
        self,
        loss_fn: Callable[..., Any],
        params: Any,
        optimizer_factory: Any,
        batches: Iterable[Any],
        *,
        val_batches: Iterable[Any] | None = None,
        has_aux: bool = False,
        opt_state: Any = None,
        max_val_batches: int | None = 20,
        outputs_fn: Callable[..., Any] | None = None,
        model_state: Any = None,
    ) -> None:
        stateful = model_state is not None
        call = _call_form(stateful)
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as {call}, got {type(loss_fn).__name__}")
        if not isinstance(has_aux, bool):
            raise TypeError(f"has_aux must be True or False, got {has_aux!r}")
        if has_aux and stateful:
            raise ValueError("has_aux=True and model_state: with model_state, loss_fn(params, model_state, batch, "
                             "train) returns (loss, new_model_state); drop has_aux")
        if outputs_fn is not None and not callable(outputs_fn):
            raise TypeError(f"outputs_fn must be None or callable as outputs_fn(params, batch), got "
                            f"{type(outputs_fn).__name__}")
        if max_val_batches is not None and (
            isinstance(max_val_batches, bool) or not isinstance(max_val_batches, int) or max_val_batches < 1
        ):
            raise ValueError(f"max_val_batches must be None or an integer >= 1, got {max_val_batches!r}")
        leaves = jax.tree_util.tree_leaves(params)
        if not leaves:
            raise ValueError("params must be a pytree with at least one array leaf, got none")
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            dtype = getattr(leaf, "dtype", None)
            dtype = np.asarray(leaf).dtype if dtype is None else dtype
            if not jnp.issubdtype(dtype, jnp.inexact):
                raise ValueError(
                    f"params{jax.tree_util.keystr(path)} has dtype {dtype}; every leaf of params must be a "
                    "floating-point array (keep integer state out of the differentiated params)"
                )

        given = isinstance(optimizer_factory, (optax.GradientTransformation, optax.MultiSteps))
        if given:
            tx = as_transformation(optimizer_factory)
        elif callable(optimizer_factory):
            if opt_state is not None:
                raise ValueError(
                    "opt_state is only used with an optax GradientTransformation (built with "
                    "inject_hyperparams); a factory's state is created fresh by optimizer_factory(lr).init(params)"
                )
            if _hashable(optimizer_factory):
                as_given, wrapped = cached_factory(optimizer_factory)
            else:
                as_given, wrapped = call_factory(optimizer_factory)
            # a factory that already injects its LR is used as it is; anything else gets wrapped
            tx = as_given if lr_slots(jax.eval_shape(as_given.init, params)) else wrapped
        else:
            raise TypeError(
                "optimizer_factory must be an optax GradientTransformation built with inject_hyperparams "
                f"or a callable lr -> GradientTransformation (e.g. optax.adam), got {type(optimizer_factory).__name__}"
            )

        if opt_state is None:
            opt_state = tx.init(params)
        else:
            expected = jax.tree_util.tree_structure(jax.eval_shape(tx.init, params))
            got = jax.tree_util.tree_structure(opt_state)
            if got != expected:
                raise ValueError(
                    f"opt_state does not match optimizer_factory.init(params): structure {got} != {expected}"
                )
        slots = lr_slots(opt_state)
        check_slots(slots, "optimizer_factory" if given else "optimizer_factory(lr)")
        base = float(slots[0].hyperparams["learning_rate"])
        if not (math.isfinite(base) and base > 0):
            raise ValueError(
                f"the (first) injected learning_rate must be a finite number > 0 to keep the ratios of the "
                f"injected learning rates during the test, got {base!r}"
            )
        ratios = tuple(float(s.hyperparams["learning_rate"]) / base for s in slots)

        self.loss_fn = loss_fn
        self.has_aux = has_aux
        self.optimizer = tx
        self.params = params
        self.opt_state = opt_state
        self.model_state = model_state
        self.family = infer_family(optimizer_factory, slots)
        self.max_val_batches = max_val_batches
        self._train = _Batches(batches, "batches")
        self._val = None if val_batches is None else _Batches(val_batches, "val_batches", limit=max_val_batches)
        self._position = 0
        self._sample = FirstBatches()  # the first batches drawn: sample_loss() scores on them
        self._outputs = None if outputs_fn is None else jit_cached(outputs_fn)
        #: micro-batches per optimizer update (``k`` of an ``optax.MultiSteps``; 1 without one)
        self.micro_batches = micro_batches_per_update(tx, params) if accumulates(opt_state) else 1
        self._lr_dtype = jnp.promote_types(jnp.float32, jnp.result_type(slots[0].hyperparams["learning_rate"]))
        if _hashable(loss_fn, tx.update):
            self._step = _cached_step(loss_fn, tx.update, has_aux, ratios, stateful)
            self._eval = _cached_eval(loss_fn, has_aux, stateful)
        else:
            self._step = _build_step(loss_fn, tx.update, has_aux, ratios, stateful)
            self._eval = _build_eval(loss_fn, has_aux, stateful)

    # -- Trainer protocol --------------------------------------------------------------------
    def snapshot(self) -> OptaxSnapshot:
        """References to params, optimizer state, model state, data position and the NumPy / random
        RNG states."""
        return OptaxSnapshot(self.params, self.opt_state, self._position, np.random.get_state(), random.getstate(),
                             self.model_state)

    def restore(self, state: OptaxSnapshot) -> None:
        """Put ``state`` back: the next :meth:`step` sees the same batch as after the snapshot."""
        if not isinstance(state, OptaxSnapshot):
            raise TypeError(f"state must be an OptaxSnapshot from snapshot(), got {type(state).__name__}")
        self.params = state.params
        self.opt_state = state.opt_state
        self.model_state = state.model_state
        self._position = state.position
        np.random.set_state(state.numpy_rng)
        random.setstate(state.python_rng)

    def step(self, lr: float) -> float:
        """One optax update at learning rate ``lr`` on the next batch; returns that batch's loss.

        With an ``optax.MultiSteps`` one update is its ``k`` micro-batches (calls of ``update``
        until it has made the update, :mod:`~lrkit.integrations.jax.accumulation`); the loss
        returned is their mean."""
        losses = []
        while True:
            batch = self._train[self._position]
            self._position += 1
            self._sample.offer(batch, _leading_dim(batch) or 1)
            self.params, self.opt_state, self.model_state, loss = self._step(
                self.params, self.opt_state, self.model_state, batch, np.asarray(lr, dtype=self._lr_dtype)
            )
            losses.append(float(loss))
            if self.micro_batches == 1 or update_completed(self.opt_state) or len(losses) >= MAX_MICRO_BATCHES:
                return float(np.mean(losses))

    def evaluate(self) -> float | None:
        """Mean loss over (at most ``max_val_batches``) validation batches, or ``None`` without any."""
        if self._val is None:
            return None
        batches = self._val.all()
        return float(np.mean([float(self._eval(self.params, self.model_state, b)) for b in batches]))

    def sample_loss(self) -> float | None:
        """The Trainer protocol's optional fixed-sample loss: the mean loss over the first training
        batches drawn (:class:`~lrkit.finder.search.FirstBatches`), the same at every call; ``None``
        before the first step. Without validation batches the finder scores its verification runs
        by it (:func:`lrkit.finder.search.run_search`)."""
        sample = self._sample.read()
        return float(np.mean([float(self._eval(self.params, self.model_state, b)) for b in sample])) if sample else None

    def first_batch_size(self) -> int | None:
        """The leading dimension shared by every array of the first batch, if there is one."""
        return _leading_dim(self._train[0])

    def data_shape(self) -> dict[str, float | None]:
        """The Trainer protocol's optional shape of the data: optimizer steps per pass (the length of
        a list of batches, over :attr:`micro_batches`; ``None`` for a generator), training examples
        (the list's length times the first batch's leading dimension) and parameters (every leaf of
        the params pytree)."""
        n = len(self._train._cache) if self._train._source is None else None
        size = self.first_batch_size() if n is not None else None
        params = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(self.params))
        return {"steps_per_epoch": None if n is None else n / self.micro_batches,
                "examples": None if size is None else n * size, "parameters": params}

    def input_sample(self) -> Any:
        """The Trainer protocol's optional inputs: the first element of the first training batch
        (a tuple or list batch; the whole batch otherwise), as NumPy arrays (:mod:`lrkit.finder.inputs`)."""
        batch = self._train[0]
        first = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
        if isinstance(first, dict):  # targets named in it are left out by the check
            return {k: [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(v)] for k, v in first.items()}
        return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(first)]

    def output_spread(self) -> float | None:
        """How much the outputs vary over the examples (:func:`lrkit.collapse.sampled_spread`) on the
        first validation batch, else on the training batch of the last step (the first batch before
        any step; no batch is used up); ``None`` without ``outputs_fn``."""
        if self._outputs is None:
            return None
        batch = self._val[0] if self._val is not None else self._train[max(self._position - 1, 0)]
        state = () if self.model_state is None else (self.model_state,)
        return outputs_spread(self._outputs, self.params, *state, batch)


# -- the one-call entry point ------------------------------------------------------------------
def _check_optional_int(name: str, value: Any, minimum: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ValueError(f"{name} must be None or an integer >= {minimum}, got {value!r}")


def find_lr_optax(
    loss_fn: Callable[..., Any],
    params: Any,
    optimizer_factory: Any,
    batches: Iterable[Any],
    *,
    val_batches: Iterable[Any] | None = None,
    has_aux: bool = False,
    start_lr: float | None = None,
    end_lr: float | None = None,
    num_iter: int | None = None,
    mode: str = "exp",
    smooth: float = 0.05,
    diverge_threshold: float = 4.0,
    progress: bool | Callable[[int, float, float], None] = True,
    verify: bool = True,
    verify_steps: int | None = None,
    train_steps: int | None = None,
    batch_size: int | None = None,
    target_batch_size: int | None = None,
    family: str | None = None,
    seed: int = 0,
    outputs_fn: Callable[..., Any] | None = None,
    many_epochs: bool = True,
    model_state: Any = None,
) -> FinderResult:
    """Find a good learning rate for a JAX model trained with optax; your params are left as they are.

    The LR grows from ``start_lr`` to ``end_lr`` over ``num_iter`` jitted optax steps
    (:math:`\\eta_i = \\eta_0 (\\eta_1/\\eta_0)^{i/(N-1)}` for ``mode="exp"``), the training loss is
    recorded, and :func:`lrkit.finder.suggest.suggest` turns the curve into a suggestion. With
    ``verify`` the suggestion may check candidate LRs with short runs of ``verify_steps`` steps
    each, from the same starting state. ``params`` is never modified (JAX arrays are immutable and
    nothing is donated): keep training with your own ``params`` and state afterwards.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar loss`` (``(loss, aux)`` with ``has_aux``).
        params: the parameter pytree.
        optimizer_factory: ``lr -> GradientTransformation`` (``optax.adam``) or a transformation
            built with ``optax.inject_hyperparams`` (see the module docstring).
        batches: training batches, cycled (a list is indexed; other iterables are cached as read).
        val_batches: optional validation batches; verification runs are then scored on them.
        has_aux: ``loss_fn`` returns ``(loss, aux)``.
        start_lr, end_lr: the LR range; ``None`` takes the family's default
            (:func:`lrkit.scaling.lr_range`, e.g. ``(1e-7, 1.0)`` for Adam, ``(1e-7, 10.0)`` unknown).
        num_iter: optimizer steps of the range test (>= 2); default 100, or planned from
            ``train_steps`` (:func:`lrkit.finder.range_test.plan_budget`).
        mode: ``"exp"`` or ``"linear"`` ramp.
        smooth: EMA weight of the newest loss, in (0, 1].
        diverge_threshold: stop when the smoothed loss exceeds this multiple of the best.
        progress: ``True`` for a progress bar on stderr (needs rich), ``False`` for none, or a
            callback ``progress(i, lr, loss)``.
        verify: let the suggestion verify candidates with short runs (``False``: curve only).
        verify_steps: optimizer steps per verification run; default
            :data:`lrkit.finder.range_test.DEFAULT_VERIFY_STEPS` when ``verify`` is true
            (or planned from ``train_steps``).
        train_steps: the length of the real training run in optimizer steps, if known: the
            range test and the verification runs are then sized to cost at most 30% of it
            (:func:`lrkit.finder.range_test.plan_budget`; explicit ``num_iter``/``verify_steps`` win).
        batch_size: the batch size of one step; default the leading dimension shared by every
            array of the first batch, when there is one.
        target_batch_size: the batch size of the real run, if different (the suggestion is
            rescaled with :func:`lrkit.scaling.scale_lr`).
        family: the optimizer family (one of :data:`lrkit.scaling.FAMILIES`) for the default range
            and the scaling rule; default inferred from the factory's name (``optax.adam`` ->
            ``"adam"``), else ``"unknown"``.
        seed: seed of the suggestion's own randomness.
        outputs_fn: optional ``outputs_fn(params, batch) -> outputs`` (e.g. ``lambda p, b:
            model.apply(p, b[0])``): a candidate LR whose run leaves every input with the same
            output (a dead network) is then rejected (see :class:`OptaxTrainer`).
        many_epochs: apply the finder's many-epoch rule when the run's shape calls for it
            (:mod:`lrkit.finder.regime`: at least 25 passes over a small training set the model can
            fit divide the answer by a further 5; the shape is read from a list of batches and
            ``train_steps``). ``False``: the answer for a run that does not overfit, or that early
            stopping ends at its best validation loss (and ``lrkit.tune``'s prior, whose trials
            see the overfitting themselves).
        model_state: the model's state outside the params, e.g. Flax's ``{"batch_stats": ...}``
            (never modified); then ``loss_fn(params, model_state, batch, train) -> (loss,
            new_model_state)`` and ``outputs_fn(params, model_state, batch)`` (see :class:`OptaxTrainer`).

    Returns:
        A :class:`~lrkit.finder.result.FinderResult` (``.suggestion``, ``.plot()``, ``.to_json()``).

    Example:
        >>> import jax.numpy as jnp, numpy as np, optax
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(256, 8)).astype(np.float32); y = x @ rng.normal(size=8).astype(np.float32)
        >>> batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]
        >>> def loss_fn(params, batch):
        ...     xb, yb = batch
        ...     return jnp.mean((xb @ params["w"] + params["b"] - yb) ** 2)
        >>> params = {"w": jnp.zeros(8), "b": jnp.zeros(())}
        >>> res = find_lr_optax(loss_fn, params, optax.sgd, batches, num_iter=50, progress=False, verify=False)
        >>> 1e-4 < res.suggestion < 2.0, res.details["family"], res.batch_size
        (True, 'sgd', 32)
    """
    if family is not None and family not in scaling.FAMILIES:
        raise ValueError(f"family must be None (infer it) or one of {', '.join(scaling.FAMILIES)}; got {family!r}")
    _check_optional_int("batch_size", batch_size, 1)
    _check_optional_int("target_batch_size", target_batch_size, 1)
    num_iter, steps = plan_budget(num_iter=num_iter, verify=verify, verify_steps=verify_steps, train_steps=train_steps)
    ctx = progress_context(progress, num_iter)  # checks progress before anything is built
    trainer = OptaxTrainer(loss_fn, params, optimizer_factory, batches, val_batches=val_batches, has_aux=has_aux,
                           outputs_fn=outputs_fn, model_state=model_state)
    family = trainer.family if family is None else family
    if start_lr is None or end_lr is None:
        lo, hi = scaling.lr_range(family)
        if family == "unknown":
            warnings.warn(
                f"find_lr_optax: the optimizer family of {factory_name(optimizer_factory)} is unknown (a "
                f"chain or a custom transformation is not recognised), so the range test sweeps the widest "
                f"range {lo:g} .. {hi:g}; name it with family='adam' (one of {', '.join(scaling.FAMILIES)}) "
                f"to use that family's range and caps", stacklevel=2)
        start_lr = lo if start_lr is None else start_lr
        end_lr = hi if end_lr is None else end_lr
    if batch_size is None and (micro := trainer.first_batch_size()) is not None:
        batch_size = micro * trainer.micro_batches  # the examples of one update
    if target_batch_size is not None and batch_size is None:
        raise ValueError(
            f"target_batch_size={target_batch_size} needs batch_size (the batches have no common leading "
            "dimension to read it from); pass batch_size"
        )
    shape = trainer_shape(trainer, train_steps, enabled=many_epochs)
    with ctx as callback:
        return find(
            watched(trainer, callback, verify_steps=steps),
            start_lr=start_lr, end_lr=end_lr, num_iter=num_iter, mode=mode, smooth=smooth,
            diverge_threshold=diverge_threshold, progress=callback, verify_steps=steps, family=family,
            verify_budget=plan_verify_budget(train_steps, num_iter), train_steps=train_steps,
            batch_size=batch_size, target_batch_size=target_batch_size, rng_seed=seed, **shape,
        )
