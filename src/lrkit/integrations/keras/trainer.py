"""Keras 3 adapter of the LR finder: :class:`KerasTrainer` (the Trainer protocol) and :func:`find_lr_keras`.

The adapter only translates: one training step at a given learning rate is
``model.train_on_batch`` after ``model.optimizer.learning_rate = lr``, and the state is read and
written through Keras variables, so the same code runs on the JAX, TensorFlow and torch backends.
The range test and the suggestion live in the NumPy core (:func:`lrkit.finder.range_test.find`).

The model must be compiled (``model.compile(optimizer=..., loss=...)``) with a float learning
rate: Keras does not let anyone assign the LR of an optimizer built with a
``LearningRateSchedule`` (or a callable), so such an optimizer is refused; compile a copy with a
float LR for the finder and put the schedule back for the real run.

Data
----
* ``x`` and ``y`` (NumPy arrays, or lists/dicts of arrays for several inputs or outputs, all with
  the same number of samples :math:`n`): step :math:`k` trains on the samples
  :math:`(kB + j) \\bmod n`, :math:`j = 0, \\dots, B-1`, with :math:`B` = ``batch_size``: in order,
  every batch exactly :math:`B` samples, wrapping around the end of the data.
* ``dataset``: a ``keras.utils.PyDataset`` (batch :math:`k` is ``dataset[k mod num_batches]``;
  ``on_epoch_begin``/``on_epoch_end`` are never called, so the dataset object is not changed) or
  any re-iterable of batches (a list, a ``tf.data.Dataset``, a torch ``DataLoader``), iterated
  again when exhausted. A batch is ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``. A one-shot
  iterator (a generator) is refused: the finder has to go back to earlier batches.

State
-----
:meth:`KerasTrainer.snapshot` copies to host memory every variable of the model
(``model.variables``: weights, non-trainable state such as BatchNormalization's moving statistics,
and the layers' ``SeedGenerator`` states, e.g. Dropout's), of the optimizer
(``model.optimizer.variables``: slots, the iteration counter, the learning rate) and of the
compiled metrics, plus the data position and the Python ``random``, NumPy global and Keras global
seed-generator states (a global generator that an unseeded ``keras.random`` call created during the
test is dropped again); :meth:`KerasTrainer.restore` writes them back in place (same variable
objects), bitwise. On the torch backend an unseeded ``Dropout`` draws from torch's global
generator rather than from a Keras ``SeedGenerator``, so that generator (and CUDA's, when in
use) is saved and restored too; on TensorFlow the global generator is created before the first
snapshot when there is none (the traced steps keep drawing from the one they captured, which a
restore must reach): the only backend-specific lines of the module.

An optimizer that is not built yet (no training step so far) is built first,
``model.optimizer.build(model.trainable_variables)``, exactly as Keras does before the first
step; after the finder it is built, with the values of a fresh build (e.g. zero moments, iteration
0). Compiled metrics that Keras builds on the first step are left built and reset. Not restored:
the ``.grad`` tensors that Keras' training step leaves on the variables on the torch backend (as
``fit`` does; the next step overwrites them). The LR variable is float32 unless the optimizer was
made otherwise, so the LR a step uses is the recorded LR rounded to float32.

Example:
    >>> import numpy as np, keras
    >>> keras.utils.set_random_seed(0)
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    >>> y = x @ np.ones((4, 1), "float32")
    >>> before = [w.copy() for w in model.get_weights()]
    >>> res = find_lr_keras(model, x, y, batch_size=16, num_iter=40, progress=False, verify=False)
    >>> 1e-4 < res.suggestion < 10
    True
    >>> all((a == b).all() for a, b in zip(before, model.get_weights()))
    True
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Callable

import keras
import numpy as np

from lrkit import scaling
from lrkit.collapse import MAX_WEIGHTS, OUTPUT_SPREAD, WEIGHT_CHANGE, output_spread, relative_change, sample_indices
from lrkit.finder.range_test import find, plan_budget, plan_verify_budget
from lrkit.finder.regime import length_of, trainer_shape
from lrkit.finder.result import FinderResult
from lrkit.finder.search import FirstBatches
from lrkit.integrations._progress import progress_context, watched
from lrkit.integrations.keras._state import Fingerprint, FrozenWeights, moved_since, optimizer_variables, warn_moved

__all__ = ["KerasTrainer", "KerasSnapshot", "find_lr_keras"]

_DEFAULT_BATCH_SIZE = 32  # Keras' own default for fit/evaluate on arrays


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _leading_dim(structure: Any) -> int | None:
    """The number of samples of a batch: the first dimension of its first array."""
    for leaf in keras.tree.flatten(structure):
        shape = getattr(leaf, "shape", None)
        if shape is not None and len(shape) > 0 and shape[0] is not None:
            return int(shape[0])
    return None


def _unwrap(optimizer: Any) -> Any:
    """The optimizer that does the update (``LossScaleOptimizer`` wraps one)."""
    inner = getattr(optimizer, "inner_optimizer", None)
    return inner if inner is not None else optimizer


# -- batches -------------------------------------------------------------------------------------
class _ArrayBatches:
    """In-order batches of exactly ``batch_size`` samples from (x, y) arrays, wrapping around."""

    def __init__(self, x: Any, y: Any, batch_size: int) -> None:
        self.x = keras.tree.map_structure(np.asarray, x)
        self.y = None if y is None else keras.tree.map_structure(np.asarray, y)
        sizes = {}
        for name, part in (("x", self.x), ("y", self.y)):
            if part is None:
                continue
            leaves = keras.tree.flatten(part)
            if not leaves:
                raise ValueError(f"{name} holds no array")
            for leaf in leaves:
                if leaf.ndim == 0:
                    raise ValueError(f"{name} must hold arrays with a sample dimension, got a 0-d array")
                sizes.setdefault(name, set()).add(int(leaf.shape[0]))
        counts = set().union(*sizes.values())
        if len(counts) != 1:
            raise ValueError(
                "x and y must have the same number of samples in every array, got "
                + ", ".join(f"{k}: {sorted(v)}" for k, v in sizes.items())
            )
        self.n = counts.pop()
        if self.n == 0:
            raise ValueError("x is empty (0 samples); the range test needs training data")
        if batch_size > self.n:
            raise ValueError(
                f"batch_size must be <= the number of samples ({self.n}), got batch_size={batch_size}"
            )
        self.batch_size = batch_size
        self.pos = 0

    def next(self) -> tuple[Any, Any, Any]:
        start, bs = self.pos, self.batch_size
        if start + bs <= self.n:
            idx: Any = slice(start, start + bs)
        else:
            idx = (start + np.arange(bs)) % self.n
        self.pos = (start + bs) % self.n

        def take(a: np.ndarray) -> np.ndarray:
            return a[idx]

        y = None if self.y is None else keras.tree.map_structure(take, self.y)
        return keras.tree.map_structure(take, self.x), y, None

    def position(self) -> int:
        return self.pos

    def seek(self, position: int) -> None:
        self.pos = position


class _PyDatasetBatches:
    """Batches ``dataset[k mod num_batches]`` of a ``keras.utils.PyDataset``, by index."""

    def __init__(self, dataset: Any) -> None:
        try:
            n = dataset.num_batches
        except NotImplementedError:
            n = None  # an infinite PyDataset, as Keras reads it
        if n is not None and (not _is_int(n) or n < 0):
            raise ValueError(f"dataset.num_batches must be None or an integer >= 0, got {n!r}")
        if n == 0:
            raise ValueError("dataset is empty (num_batches == 0); the range test needs training data")
        self.dataset = dataset
        self.n = n
        self.index = 0

    def next(self) -> tuple[Any, Any, Any]:
        batch = self.dataset[self.index]
        self.index += 1
        if self.n is not None and self.index >= self.n:
            self.index = 0
        return keras.utils.unpack_x_y_sample_weight(batch)

    def position(self) -> int:
        return self.index

    def seek(self, position: int) -> None:
        self.index = position


class _IterableBatches:
    """Batches of a re-iterable, started again when exhausted; position = batches into the pass."""

    def __init__(self, dataset: Any) -> None:
        if isinstance(dataset, Iterator):
            raise ValueError(
                f"dataset is a one-shot iterator ({type(dataset).__name__}), which cannot be rewound; pass "
                "a re-iterable (a list of batches, a keras.utils.PyDataset, a tf.data.Dataset, a DataLoader)"
            )
        if hasattr(dataset, "__len__") and len(dataset) == 0:
            raise ValueError("dataset is empty (len(dataset) == 0); the range test needs training data")
        self.dataset = dataset
        self._it: Iterator[Any] | None = None
        self.count = 0  # batches taken from the current pass

    def _fresh(self) -> Iterator[Any]:
        self.count = 0
        return iter(self.dataset)

    def next(self) -> tuple[Any, Any, Any]:
        if self._it is None:
            skip, self._it = self.count, self._fresh()
            for _ in range(skip):  # after a restore: back to the same batch of the pass
                next(self._it)
                self.count += 1
        try:
            batch = next(self._it)
        except StopIteration:
            self._it = self._fresh()
            try:
                batch = next(self._it)
            except StopIteration:
                raise ValueError("dataset is empty (it yielded no batch)") from None
        self.count += 1
        return keras.utils.unpack_x_y_sample_weight(batch)

    def position(self) -> int:
        return self.count

    def seek(self, position: int) -> None:
        self._it = None
        self.count = position


def _is_batches(x: Any) -> bool:
    """``x`` is a source of batches, as ``model.fit(x)`` takes one (a ``PyDataset``, a generator, a
    ``tf.data``/torch loader), not an array or a structure of arrays."""
    if isinstance(x, keras.utils.PyDataset):
        return True
    return (isinstance(x, Iterable) and not hasattr(x, "shape")
            and not isinstance(x, (list, tuple, dict, str, bytes, np.ndarray)))


def _batches_of(x: Any, y: Any, dataset: Any, batch_size: int | None) -> Any:
    if dataset is not None:
        if x is not None or y is not None:
            raise ValueError("pass either x (and y) or dataset, not both")
        if isinstance(dataset, keras.utils.PyDataset):
            return _PyDatasetBatches(dataset)
        if isinstance(dataset, (str, bytes, dict)) or not isinstance(dataset, Iterable):
            raise ValueError(
                "dataset must be a keras.utils.PyDataset or a re-iterable of (x, y) batches, got "
                f"{type(dataset).__name__}"
            )
        return _IterableBatches(dataset)
    if x is None:
        raise ValueError("no training data: pass x and y (arrays) or dataset (batches)")
    return _ArrayBatches(x, y, _DEFAULT_BATCH_SIZE if batch_size is None else batch_size)


# -- state ---------------------------------------------------------------------------------------
def _backend_rng_state() -> Any:
    """The global RNG state of the backend, where Keras layers may draw from it (torch only)."""
    if keras.backend.backend() != "torch":
        return None  # JAX and TensorFlow draw every random number from Keras SeedGenerators
    import torch  # the backend itself: already imported

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_backend_rng_state(state: Any) -> None:
    if state is None:
        return
    import torch

    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def _global_seed_generator() -> Any:
    """Keras' global ``SeedGenerator`` (unseeded ``keras.random`` calls) if one exists; never creates it."""
    try:
        from keras.src.backend.common import global_state
        from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR
    except ImportError:  # pragma: no cover - a Keras that moved it: nothing to save
        return None
    return global_state.get_global_attribute(GLOBAL_SEED_GENERATOR)


def _create_global_seed_generator() -> None:
    """Keras' global ``SeedGenerator``, created as an unseeded ``keras.random`` call creates it."""
    try:
        from keras.src.random.seed_generator import global_seed_generator
    except ImportError:  # pragma: no cover - a Keras that moved it: unseeded draws replay on torch only
        return
    global_seed_generator()


def _forget_global_seed_generator() -> None:
    """Back to "no global SeedGenerator yet": the next unseeded draw creates one, seeded from the
    (restored) Python ``random``, exactly as it would have without the test."""
    from keras.src.backend.common import global_state
    from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR

    global_state.set_global_attribute(GLOBAL_SEED_GENERATOR, None)


@dataclass(frozen=True, eq=False)
class KerasSnapshot:
    """Host copies of a Keras model's, optimizer's and metrics' variables, RNGs and the data position.

    ``variables`` are the live Keras variables and ``values`` their NumPy copies, in the same order;
    restoring assigns each value back to its variable. A frozen weight (non-trainable, two or more
    dimensions) is kept as a :class:`~lrkit.integrations.keras._state.Fingerprint`, checked instead.
    """

    variables: tuple[Any, ...]
    values: tuple[Any, ...]
    position: int
    python_rng: Any
    numpy_rng: Any
    backend_rng: Any
    had_global_seed_generator: bool


class KerasTrainer:
    """The :class:`~lrkit.finder.trainer.Trainer` protocol for a compiled Keras 3 model.

    Args:
        model: a built, compiled ``keras.Model`` with trainable weights and a float learning rate.
        x, y: training arrays (or lists/dicts of arrays); ``y`` may be ``None`` for a model that
            adds its own loss.
        dataset: instead of ``x``/``y``, a ``keras.utils.PyDataset`` or a re-iterable of batches
            (see the module docstring).
        batch_size: samples per step. With ``x``/``y`` the slice size (default 32, Keras' default);
            with ``dataset`` the size of its batches, declared (default ``dataset.batch_size`` when
            it has one), and a larger batch is refused.
        val_data: ``(x_val, y_val)`` or ``(x_val, y_val, sample_weight)`` arrays, or a PyDataset /
            re-iterable of batches, for :meth:`evaluate`; ``None`` for none.

    Example:
        >>> import numpy as np, keras
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> model.compile(optimizer="adam", loss="mse")
        >>> x, y = np.ones((8, 3), "float32"), np.zeros((8, 1), "float32")
        >>> t = KerasTrainer(model, x, y, batch_size=4, val_data=(x, y))
        >>> s = t.snapshot(); loss = t.step(0.1); t.restore(s)
        >>> isinstance(loss, float), isinstance(t.evaluate(), float)
        (True, True)
    """

    def __init__(
        self,
        model: Any,
        x: Any = None,
        y: Any = None,
        *,
        dataset: Any = None,
        batch_size: int | None = None,
        val_data: Any = None,
    ) -> None:
        if not isinstance(model, keras.Model):
            raise ValueError(f"model must be a keras.Model, got {type(model).__name__}")
        if not getattr(model, "compiled", False) or model.optimizer is None:
            raise ValueError(
                "model is not compiled: call model.compile(optimizer=..., loss=...) before the range test"
            )
        if not model.built:
            raise ValueError(
                "model is not built (its weights do not exist yet): start it with keras.Input(shape), call "
                "model.build(input_shape), or run it on one batch, so that its weights can be snapshotted"
            )
        if not model.trainable_weights:
            raise ValueError(
                f"model has no trainable weights ({len(model.weights)} weights, none trainable; "
                f"model.trainable={model.trainable})"
            )
        if not isinstance(model.optimizer.learning_rate, keras.Variable):
            held = getattr(_unwrap(model.optimizer), "_learning_rate", None)
            what = (
                f"a LearningRateSchedule ({type(held).__name__})"
                if isinstance(held, keras.optimizers.schedules.LearningRateSchedule)
                else f"not a settable variable (a {type(held).__name__})"
            )
            raise ValueError(
                f"model.optimizer.learning_rate is {what}, which Keras does not let the finder set; compile "
                "with a float learning rate for the finder, e.g. optimizer=keras.optimizers.Adam(1e-3), "
                "and use the schedule for the real run"
            )
        if batch_size is not None and (not _is_int(batch_size) or batch_size < 1):
            raise ValueError(f"batch_size must be None or an integer >= 1, got {batch_size!r}")
        if dataset is None and y is None and _is_batches(x):  # model.fit(x=dataset) style
            x, dataset = None, x
        if dataset is not None and batch_size is None:
            declared = getattr(dataset, "batch_size", None)
            batch_size = int(declared) if _is_int(declared) and declared >= 1 else None
        self._batches = _batches_of(x, y, dataset, batch_size)
        self.batch_size: int | None = self._batches.batch_size if dataset is None else batch_size
        self._val = self._check_val(val_data)
        self._sample = FirstBatches()  # the first batches drawn: sample_loss() scores on them
        self.model = model
        # every global SeedGenerator this trainer has seen: a compiled step (TensorFlow's tf.function)
        # keeps drawing from the one it captured when traced, whatever Keras' global holds later
        self._seed_generators: dict[int, Any] = {}

    @staticmethod
    def _check_val(val_data: Any) -> Any:
        if val_data is None:
            return None
        if isinstance(val_data, tuple):
            if len(val_data) not in (2, 3):
                raise ValueError(
                    f"val_data as a tuple must be (x_val, y_val) or (x_val, y_val, sample_weight), got a "
                    f"tuple of length {len(val_data)}"
                )
            n = _leading_dim(keras.tree.map_structure(np.asarray, val_data[0]))
            if n == 0:
                raise ValueError("val_data is empty (x_val has 0 samples)")
            return ("arrays", val_data)
        if isinstance(val_data, keras.utils.PyDataset):
            try:
                n = val_data.num_batches
            except NotImplementedError:
                n = None
            if n is None:
                raise ValueError("val_data is an infinite PyDataset (num_batches is None); give it a length")
            if n == 0:
                raise ValueError("val_data is empty (num_batches == 0)")
            return ("pydataset", val_data)
        if isinstance(val_data, Iterator) or isinstance(val_data, (str, bytes, dict)) or not isinstance(
            val_data, Iterable
        ):
            raise ValueError(
                "val_data must be None, an (x_val, y_val[, sample_weight]) tuple, a keras.utils.PyDataset or a "
                f"re-iterable of batches, got {type(val_data).__name__}"
            )
        return ("iterable", val_data)

    # -- Trainer protocol --------------------------------------------------------------------
    def _variables(self) -> list[Any]:
        seen: set[int] = set()
        out = []
        gen = _global_seed_generator()
        if gen is not None:
            self._seed_generators.setdefault(id(gen), gen)
        extra = [g.state for g in self._seed_generators.values()]
        for v in [*self.model.variables, *self.model.optimizer.variables, *self.model.metrics_variables, *extra]:
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
        return out

    def snapshot(self) -> KerasSnapshot:
        """Host copies of every model, optimizer and metric variable, the RNGs and the data position."""
        optimizer_variables(self.model)  # built, as Keras builds it before a first step
        python_rng = random.getstate()
        had_generator = _global_seed_generator() is not None
        if not had_generator and keras.backend.backend() == "tensorflow":
            # Created now (from Python's random, given back below), an unseeded draw's generator is in
            # the snapshot: the tf.function of the steps captures this one when traced and replays it
            # after a restore. Created by the first step, it would be out of reach of every restore.
            # (Elsewhere the steps draw from Keras' current global generator, dropped by a restore and
            # created again from the restored Python random: the same stream.)
            _create_global_seed_generator()
        variables = tuple(self._variables())
        # frozen weights (a LoRA base, a frozen backbone): a fingerprint, checked on restore
        left = FrozenWeights().left_out(self.model.weights)
        values = tuple(left[v.path] if v.path in left else np.array(keras.ops.convert_to_numpy(v.value), copy=True)
                       for v in variables)
        random.setstate(python_rng)
        return KerasSnapshot(
            variables=variables, values=values, position=self._batches.position(),
            python_rng=python_rng, numpy_rng=np.random.get_state(), backend_rng=_backend_rng_state(),
            had_global_seed_generator=had_generator,
        )

    def restore(self, state: KerasSnapshot) -> None:
        """Assign ``state`` back to the same variables; reset metrics built since; rewind data and RNGs."""
        self.model.reset_metrics()  # metrics built after the snapshot go back to their empty state
        warn_moved(moved_since(list(state.variables), list(state.values)))
        for v, value in zip(state.variables, state.values):
            if not isinstance(value, Fingerprint):
                v.assign(value)
        self._batches.seek(state.position)
        random.setstate(state.python_rng)
        np.random.set_state(state.numpy_rng)
        _set_backend_rng_state(state.backend_rng)
        if not state.had_global_seed_generator and _global_seed_generator() is not None:
            _forget_global_seed_generator()  # created for (or during) the test: none before it

    def input_sample(self) -> Any:
        """The Trainer protocol's optional inputs: those of the first 1024 examples of ``x``
        (``None`` for a dataset of batches, which is not read again for this;
        :mod:`lrkit.finder.inputs`)."""
        if not isinstance(self._batches, _ArrayBatches):
            return None
        return keras.tree.flatten(keras.tree.map_structure(lambda a: a[:1024], self._batches.x))

    def set_lr(self, lr: float) -> None:
        """Set ``model.optimizer.learning_rate`` to ``lr`` (assigned to the LR variable)."""
        self.model.optimizer.learning_rate = lr

    def step(self, lr: float) -> float:
        """One ``train_on_batch`` at learning rate ``lr`` on the next batch; returns its loss."""
        if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating, np.integer)) or not (
            math.isfinite(lr) and lr > 0
        ):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        optimizer_variables(self.model)  # built, as Keras builds it before a first step
        self.set_lr(float(lr))
        x, y, sample_weight = self._batches.next()
        if self.batch_size is not None and not isinstance(self._batches, _ArrayBatches):
            size = _leading_dim(x)
            if size is not None and size > self.batch_size:
                raise ValueError(
                    f"the dataset yielded a batch of {size} samples but batch_size={self.batch_size}; pass "
                    "the dataset's real batch size (or batch_size=None)"
                )
        self._sample.offer((x, y, sample_weight), _leading_dim(x) or 1)
        logs = self.model.train_on_batch(x, y, sample_weight=sample_weight, return_dict=True)
        return self._loss_of(logs)

    def sample_loss(self) -> float | None:
        """The Trainer protocol's optional fixed-sample loss: the mean loss (``test_on_batch``,
        weighted by batch size) over the first training batches drawn
        (:class:`~lrkit.finder.search.FirstBatches`), the same at every call; ``None`` before the
        first step. Without ``val_data`` the finder scores its verification runs by it
        (:func:`lrkit.finder.search.run_search`)."""
        total, count = 0.0, 0
        for x, y, sample_weight in self._sample.read():
            size = _leading_dim(x) or 1
            total += self._loss_of(self.model.test_on_batch(x, y, sample_weight=sample_weight, return_dict=True)) * size
            count += size
        return total / count if count else None

    @staticmethod
    def _loss_of(logs: dict[str, Any]) -> float:
        if "loss" not in logs:
            raise ValueError(f"the model reported no 'loss' (its logs have {sorted(logs)}); compile it with a loss")
        return float(logs["loss"])

    def evaluate(self) -> float | None:
        """Mean validation loss over ``val_data`` (weighted by batch size, as ``model.evaluate``), or ``None``."""
        if self._val is None:
            return None
        kind, data = self._val
        if kind == "arrays":
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            logs = self.model.evaluate(
                x, y, sample_weight=sample_weight, batch_size=self.batch_size or _DEFAULT_BATCH_SIZE,
                verbose=0, return_dict=True,
            )
            return self._loss_of(logs)
        batches = (data[i] for i in range(data.num_batches)) if kind == "pydataset" else iter(data)
        total, count = 0.0, 0
        for batch in batches:
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
            size = _leading_dim(x) or 1
            total += self._loss_of(self.model.test_on_batch(x, y, sample_weight=sample_weight, return_dict=True)) * size
            count += size
        if count == 0:
            raise ValueError("val_data is empty (it yielded no batch)")
        return total / count

    def data_shape(self) -> dict[str, float | None]:
        """The Trainer protocol's optional shape of the data: steps per pass (``ceil(len(x) /
        batch_size)`` for arrays, as ``fit`` takes them; the dataset's batches per pass when it
        says), training examples (arrays; a dataset's batches times ``batch_size``) and trainable
        parameters."""
        b = self._batches
        if isinstance(b, _ArrayBatches):
            steps, examples = math.ceil(b.n / b.batch_size), b.n
        else:
            n = b.n if isinstance(b, _PyDatasetBatches) else (length_of(b.dataset) or None)
            steps, examples = n, (None if n is None or self.batch_size is None else n * self.batch_size)
        params = sum(int(np.prod(w.shape)) for w in self.model.trainable_weights)
        return {"steps_per_epoch": steps, "examples": examples, "parameters": params}

    def output_spread(self) -> float | None:
        """How much the model's outputs vary over the examples of the first validation batch (of
        array data, its first 256 rows): :func:`spread_on` those inputs, ``None`` without
        validation data."""
        if self._val is None:
            return None
        kind, data = self._val
        return spread_on(self.model, first_inputs(data if kind == "arrays" else None,
                                                  data if kind != "arrays" else None))


def first_inputs(arrays: Any = None, batches: Any = None, rows: int = 256) -> Any:
    """The inputs of the first ``rows`` examples of ``arrays`` (``(x, y[, w])`` or ``x``), else of
    the first batch of ``batches`` (a ``PyDataset`` or a re-iterable); ``None`` without either."""
    if arrays is not None and _is_batches(arrays):  # batches passed where fit() takes x
        arrays, batches = None, arrays
    if arrays is not None:
        x = arrays[0] if isinstance(arrays, tuple) else arrays
        return keras.tree.map_structure(lambda a: a[:rows], x)
    if batches is None:
        return None
    first = batches[0] if isinstance(batches, keras.utils.PyDataset) else next(iter(batches))
    x, _, _ = keras.utils.unpack_x_y_sample_weight(first)
    return x


def spread_on(model: Any, x: Any) -> float | None:
    """:func:`lrkit.collapse.output_spread` of ``model``'s first output on inputs ``x`` (inference
    mode; ``None`` when ``x`` is)."""
    if x is None:
        return None
    out = keras.tree.flatten(model(x, training=False))[0]
    return output_spread(keras.ops.convert_to_numpy(out))


class WeightSample:
    """A fixed sample of a Keras model's trainable weights, kept from where they started:
    :meth:`change` is :func:`lrkit.collapse.relative_change` of the sample since then (at most
    :data:`~lrkit.collapse.MAX_WEIGHTS` values, each variable an evenly spread share in proportion
    to its size; ``None`` when the weights started at zero). The torch twin is
    :class:`lrkit.integrations.torch.outputs.WeightSample`.

    Example:
        >>> layer = keras.layers.Dense(2)
        >>> layer.build((None, 4))
        >>> w = WeightSample(layer.trainable_weights)
        >>> w.change()
        0.0
        >>> _ = layer.kernel.assign(layer.kernel * 1.5)
        >>> round(w.change(), 6)
        0.5
    """

    def __init__(self, variables: Any, size: int = MAX_WEIGHTS) -> None:
        variables = list(variables)
        total = sum(int(np.prod(v.shape)) for v in variables) or 1
        self._idx = [sample_indices(int(np.prod(v.shape)), max(1, round(size * int(np.prod(v.shape)) / total)))
                     for v in variables]
        self._vars = variables
        self._start = self._values()

    def _values(self) -> np.ndarray:
        parts = []
        for v, idx in zip(self._vars, self._idx):
            flat = keras.ops.reshape(v, (-1,))
            parts.append(np.asarray(keras.ops.convert_to_numpy(flat if idx is None else keras.ops.take(flat, idx)),
                                    dtype=np.float64))
        return np.concatenate(parts) if parts else np.zeros(0)

    def change(self) -> float | None:
        return relative_change(self._start, self._values())


class OutputsCheck:
    """The spread of a Keras model's outputs on fixed inputs (:func:`spread_on`), for the doctor's
    dead-network sign (:mod:`lrkit.doctor.signs.dead`): read before the first step, before every
    ``every``-th step and before the first step after a rollback (:meth:`restart`), and handed over
    with that step's observation (:meth:`merged`). A callback does not see ``fit``'s batches, so the
    inputs are given (:func:`first_inputs` of them). With ``weights=True`` the same readings also
    say how far the trainable weights moved since the first (:class:`WeightSample`, the metric
    ``weight_change``), inputs or not."""

    def __init__(self, inputs: Any, every: int, weights: bool = False) -> None:
        self.inputs, self.every = inputs, every
        self._again = True
        self._pending: dict[str, float] = {}
        self._weights: WeightSample | None = None
        self._want_weights = bool(weights)

    def before_step(self, model: Any, step: int) -> None:
        """Read the state step ``step`` starts from, when due."""
        if not self.every or not (self._again or step % self.every == 0):
            return
        value = spread_on(model, self.inputs)
        self._pending, self._again = ({OUTPUT_SPREAD: float(value)} if value is not None else {}), False
        if self._want_weights:
            if self._weights is None:  # the weights this run starts from
                self._weights = WeightSample(model.trainable_weights)
            moved = self._weights.change()
            if moved is not None:
                self._pending[WEIGHT_CHANGE] = moved

    def merged(self, metrics: Any) -> Any:
        """``metrics`` with the reading taken before this step (then forgotten)."""
        if not self._pending:
            return metrics
        out, self._pending = {**(metrics or {}), **self._pending}, {}
        return out

    def restart(self) -> None:
        """After a rollback: read the restored state before the next step."""
        self._again = True


def find_lr_keras(
    model: Any,
    x: Any = None,
    y: Any = None,
    *,
    dataset: Any = None,
    batch_size: int | None = None,
    val_data: Any = None,
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
    target_batch_size: int | None = None,
    seed: int = 0,
    many_epochs: bool = True,
) -> FinderResult:
    """Find a good learning rate for a compiled Keras 3 model with an LR range test; leaves it as it was.

    The LR grows from ``start_lr`` to ``end_lr`` over ``num_iter`` training steps
    (:math:`\\eta_i = \\eta_0 (\\eta_1/\\eta_0)^{i/(N-1)}` for ``mode="exp"``), the loss of every
    step is recorded, and :func:`lrkit.finder.suggest.suggest` turns the curve into a suggestion.
    With ``verify`` the suggestion may check candidate LRs with short runs of ``verify_steps``
    steps each, from the same starting state (scored by ``val_data`` when given). Weights,
    optimizer variables (the LR included), metrics and RNG states are restored bitwise afterwards,
    also on divergence or an exception (see the module docstring).

    Args:
        model, x, y, dataset, batch_size, val_data: as for :class:`KerasTrainer`.
        start_lr, end_lr: the LR range; ``None`` takes the optimizer family's default
            (:func:`lrkit.scaling.lr_range`, e.g. ``(1e-7, 1.0)`` for Adam).
        num_iter: optimizer steps of the range test (>= 2); default 100, or planned from
            ``train_steps`` (:func:`lrkit.finder.range_test.plan_budget`).
        mode: ``"exp"`` or ``"linear"`` ramp.
        smooth: EMA weight of the newest loss, in (0, 1].
        diverge_threshold: stop when the smoothed loss exceeds this multiple of the best.
        progress: ``True`` for a progress bar on stderr (needs rich), ``False`` for none, or a
            callback ``progress(i, lr, loss)``.
        verify: let the suggestion verify candidates with short runs (``False``: curve only).
        verify_steps: steps per verification run; default
            :data:`lrkit.finder.range_test.DEFAULT_VERIFY_STEPS` when ``verify`` is true
            (or planned from ``train_steps``).
        train_steps: the length of the real training run in optimizer steps, if known: the
            range test and the verification runs are then sized to cost at most 30% of it
            (:func:`lrkit.finder.range_test.plan_budget`; explicit ``num_iter``/``verify_steps`` win).
            With an optimizer built with ``gradient_accumulation_steps=k`` a step is a batch, as
            Keras counts them (``fit``'s steps, and the steps its LR schedules follow), and the
            result's batch size is the update's, ``k * batch_size``.
        target_batch_size: the batch size of the real run, if different (the suggestion is
            rescaled with :func:`lrkit.scaling.scale_lr`; needs a known ``batch_size``).
        seed: seed of the suggestion's own randomness.
        many_epochs: apply the finder's many-epoch rule when the run's shape calls for it
            (:mod:`lrkit.finder.regime`: at least 25 passes over a small training set the model can
            fit divide the answer by a further 5; the shape is read from the data and ``train_steps``).
            ``False``: the answer for a run that does not overfit, or that early stopping ends at
            its best validation loss (and ``lrkit.tune``'s prior, whose trials see the overfitting
            themselves).

    Returns:
        A :class:`~lrkit.finder.result.FinderResult` (``.suggestion``, ``.plot()``, ``.to_json()``).

    Example:
        >>> import numpy as np, keras
        >>> keras.utils.set_random_seed(0)
        >>> x = np.random.default_rng(0).normal(size=(256, 8)).astype("float32")
        >>> y = (x[:, :1] > 0).astype("float32")
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1, activation="sigmoid")])
        >>> model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
        >>> res = find_lr_keras(model, x, y, num_iter=50, progress=False, verify=False)
        >>> 1e-5 < res.suggestion < 1.0, res.batch_size
        (True, 32)
    """
    num_iter, steps = plan_budget(num_iter=num_iter, verify=verify, verify_steps=verify_steps, train_steps=train_steps)
    ctx = progress_context(progress, num_iter)
    trainer = KerasTrainer(model, x, y, dataset=dataset, batch_size=batch_size, val_data=val_data)
    opt = _unwrap(model.optimizer)
    family = scaling.optimizer_family(opt)
    if start_lr is None or end_lr is None:
        lo, hi = scaling.lr_range(family)
        start_lr = lo if start_lr is None else start_lr
        end_lr = hi if end_lr is None else end_lr
    shape = trainer_shape(trainer, train_steps, enabled=many_epochs)
    # an optimizer that accumulates gradients updates once per k batches: the update's batch is k of them
    accumulation = getattr(opt, "gradient_accumulation_steps", None) or 1
    update_batch = None if trainer.batch_size is None else trainer.batch_size * accumulation
    with ctx as callback:
        return find(
            watched(trainer, callback, verify_steps=steps),
            start_lr=start_lr, end_lr=end_lr, num_iter=num_iter, mode=mode, smooth=smooth,
            diverge_threshold=diverge_threshold, progress=callback, verify_steps=steps, family=family,
            verify_budget=plan_verify_budget(train_steps, num_iter), train_steps=train_steps,
            batch_size=update_batch, target_batch_size=target_batch_size, rng_seed=seed, **shape,
        )
