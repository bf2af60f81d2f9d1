"""lrkit — take the guesswork out of the learning rate.

The core (schedules, the range-test logic and its suggestion, the LR doctor, scaling rules)
needs only NumPy; framework adapters are imported on first use::

    import lrkit
    sched = lrkit.schedules.warmup(lrkit.schedules.cosine(base_lr=0.1, total_steps=900), warmup_steps=100)
    result = lrkit.find_lr(model, optimizer, loss_fn, train_loader)   # PyTorch
    result = lrkit.find_lr_keras(compiled_model, x, y)                  # Keras 3
    result = lrkit.find_lr_optax(loss_fn, params, optax.adam, batches)  # JAX/optax
    verdict = lrkit.diagnose("metrics.csv")
    best = lrkit.tune(objective, budget=4, train_steps=300)             # search (Optuna)
"""
from __future__ import annotations

import importlib
from typing import Any

from lrkit import scaling, schedules
from lrkit.schedules import Schedule

__version__ = "0.1.0"

# A Keras model saved with an lrkit schedule loads after `import lrkit`: lrkit's Keras classes are
# registered with Keras's serialisation once Keras is imported (Keras itself is not imported here).
from lrkit._when_imported import when_imported as _when_imported  # noqa: E402

_when_imported("keras", "lrkit.integrations.keras.schedule")

# public name -> module that defines it; imported on first access so that `import lrkit`
# stays NumPy-only and fast.
_LAZY = {
    "find_lr": "lrkit.integrations.torch.trainer",
    "TorchTrainer": "lrkit.integrations.torch.trainer",
    "find_lr_keras": "lrkit.integrations.keras.trainer",
    "KerasTrainer": "lrkit.integrations.keras.trainer",
    "find_lr_optax": "lrkit.integrations.jax.trainer",
    "OptaxTrainer": "lrkit.integrations.jax.trainer",
    "FinderResult": "lrkit.finder.result",
    "run_range_test": "lrkit.finder.range_test",
    "suggest": "lrkit.finder.suggest",
    "Suggestion": "lrkit.finder.suggest",
    "classic_suggestions": "lrkit.finder.suggest",
    "Trainer": "lrkit.finder.trainer",
    "Doctor": "lrkit.doctor",
    "Diagnosis": "lrkit.doctor",
    "diagnose": "lrkit.doctor",
    "read_log": "lrkit.doctor",
    "LogRecords": "lrkit.doctor",
    "LogFormatError": "lrkit.doctor",
    "Guard": "lrkit.doctor",
    "GuardGaveUp": "lrkit.doctor",
    "Intervention": "lrkit.doctor",
    "stability_report": "lrkit.integrations.torch.hessian",
    "optimizer_family": "lrkit.scaling",
    "default_lr": "lrkit.scaling",
    "lr_range": "lrkit.scaling",
    "scale_lr": "lrkit.scaling",
    "warmup_steps_for": "lrkit.scaling",
    "tune": "lrkit.tune",
}

__all__ = ["Schedule", "schedules", "scaling", "__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lrkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
