r"""The shape of the real run, and the regime where the finder's short runs cannot see its end.

The finder's verification runs cover :math:`k \approx T/30` steps of a :math:`T`-step run. Where the
run makes many passes over a training set the model can fit exactly, the validation loss of the
full run passes a minimum and rises again long before its end (overfitting); a :math:`k`-step run,
within its first passes, sees only the fall, and rewards the LR that falls fastest. Along the
gradient flow the validation minimum sits at a fixed summed LR :math:`\sum_t \eta_t`, so the best
*constant* LR of a longer run is smaller in proportion, and the short-run optimum lands several
times above it.

**The regime** (:func:`many_epochs`): the run makes at least :data:`MANY_EPOCHS` passes,

.. math::

    E = \frac{T\,B}{N} \ge 25, \qquad \frac{P}{N} \ge 1, \qquad N \le 1000

(:math:`B` examples per optimizer step, :math:`N` training examples, :math:`P` trainable
parameters: enough to fit every example; a small training set, :data:`MAX_EXAMPLES`, where the
evidence below was measured -- a large one trained for many epochs, an augmented image set run for
200, is left alone: nothing measured says what its best LR does), and the optimizer does not accumulate its squared
gradients without forgetting them (Adagrad: its steps shrink like :math:`1/\sqrt{t}`, so a long
run's summed LR grows like :math:`\sqrt{T}`, not :math:`T`, and the argument above does not hold).
There the verified answer is divided by a further :data:`MANY_EPOCHS_FACTOR` and the finder says so.

Evidence (development data only): on the seven development tasks of at least 25 passes over a set
their model can fit (the finder benchmark's diabetes/RMSprop, fine-tuned MNIST/AdamW, clipped
diabetes/SGD and unscaled wine/Adagrad, 43-62 passes; and the three small-data SGD-momentum MLPs of
``benchmarks/autopilot_overfit.py``, 31-37 passes), six seeds each, the full run's best constant LR
sat below the verified answer on every task but the Adagrad one, by 0.88 decades at the median of
the six tasks' means (0.45 to 1.25). On the same grid curves, dividing by
3, 4, 5, 6 or 8 gave a median/worst regret of 5/22, 3/14, 2.4/9.8, 2.6/6.6 and 2.9/5.9% over those six
tasks (15/100% undivided); 5 is the middle of the flat optimum. Runs of 14-19 passes (digits/Adam,
big-batch MNIST/Adam) had their validation minimum in the second half of the run and are left alone;
the unscaled wine/Adagrad run (62 passes) is below its best LR already, and is left alone by the
Adagrad clause. Held-out, run once to report (``benchmarks/finder_regret.py``,
``benchmarks/finder_small_data.py``): of the seven held-out tasks in the regime, five came closer to
their best LR (small-data median/worst regret 16/166% -> 6/41%) and two moved the wrong way, their
best LR near the undivided answer (a fine-tuned digits network with Adam 4% -> 31%, RMSprop on wine
6% -> 41%): the factor is a median over tasks that overfit by different amounts, not a measurement
of this run. A run that trains slowly and never reaches its overfitting within the run is hurt
too: the unscaled wine inputs of ``tests/test_doctor_dead.py`` (an MLP with Adam, 37 passes) end at
a validation loss of 0.75 under the autopilot told the shape, 0.50 without; the short runs do not
tell such a run apart yet (the Adagrad clause covers the development case of the kind). The
autopilot uses the divided answer and then makes no early-overfitting restart
(:attr:`lrkit.autopilot.plan.AutopilotPlan.many_epochs`).

Example:
    >>> shape = run_shape(train_steps=400, steps_per_epoch=13, examples=419, parameters=2114)
    >>> round(shape["epochs"], 1), round(shape["params_per_example"], 2), shape["examples"]
    (30.8, 5.05, 419.0)
    >>> many_epochs(**shape, family="sgd_momentum")
    True
    >>> many_epochs(**shape, family="adagrad")
    False
"""
from __future__ import annotations

import math
from typing import Any

__all__ = ["MANY_EPOCHS", "MANY_EPOCHS_FACTOR", "MAX_EXAMPLES", "ACCUMULATING", "run_shape", "trainer_shape", "many_epochs",
           "check_shape", "length_of"]

#: passes over the training set from which a run is in the many-epoch regime
MANY_EPOCHS = 25.0
#: trainable parameters per training example from which a model can fit every example
FITS_EVERY_EXAMPLE = 1.0
#: most training examples of a run in the regime: every run it was measured on had 100-450
MAX_EXAMPLES = 1000
#: the verified answer is divided by this in the many-epoch regime
MANY_EPOCHS_FACTOR = 5.0
#: optimizer families whose squared-gradient sums never forget (the regime does not apply)
ACCUMULATING = frozenset({"adagrad"})


def run_shape(*, train_steps: int | None, steps_per_epoch: float | None, examples: int | None,
              parameters: int | None) -> dict[str, float | None]:
    """``{"epochs": T / steps_per_epoch, "params_per_example": parameters / examples, "examples":
    examples}``, each ``None`` where a part is unknown (an iterable without a length, no ``train_steps``)."""
    def known(v: Any) -> bool:
        return v is not None and not isinstance(v, bool) and math.isfinite(float(v)) and float(v) > 0

    epochs = float(train_steps) / float(steps_per_epoch) if known(train_steps) and known(steps_per_epoch) else None
    ppe = float(parameters) / float(examples) if known(parameters) and known(examples) else None
    return {"epochs": epochs, "params_per_example": ppe, "examples": float(examples) if known(examples) else None}


def length_of(obj: Any) -> int | None:
    """``len(obj)``, or ``None`` for an object without a length: an iterable, and the loaders and
    datasets that have the method but raise (a torch ``DataLoader`` over an ``IterableDataset``
    without ``__len__``, a ``tf.data.Dataset`` of unknown cardinality).

    Example:
        >>> length_of([1, 2, 3]), length_of(iter([1, 2, 3]))
        (3, None)
    """
    try:
        return int(len(obj))
    except (TypeError, NotImplementedError, ValueError):
        return None


def trainer_shape(trainer: Any, train_steps: int | None, *, enabled: Any = True) -> dict[str, float | None]:
    """:func:`run_shape` from a Trainer's optional ``data_shape()`` and ``train_steps`` (``{}`` when
    the trainer has none, or with ``enabled=False``: a ``find_lr(..., many_epochs=False)``)."""
    if not isinstance(enabled, bool):
        raise ValueError(f"many_epochs must be True or False, got {enabled!r}")
    data = getattr(trainer, "data_shape", None)
    return run_shape(train_steps=train_steps, **data()) if enabled and callable(data) else {}


def check_shape(name: str, value: Any) -> float | None:
    """``value`` as a float, ``None`` kept; anything but a finite number > 0 raises ``ValueError``
    naming ``name``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0 or None, got {value!r}")
    return float(value)


def many_epochs(epochs: float | None, params_per_example: float | None, family: str,
                examples: float | None = None) -> bool:
    """The run is in the many-epoch regime (module docstring); ``False`` when any is unknown."""
    if epochs is None or params_per_example is None or examples is None:
        return False
    return (epochs >= MANY_EPOCHS and params_per_example >= FITS_EVERY_EXAMPLE and examples <= MAX_EXAMPLES
            and family not in ACCUMULATING)
