"""Every docstring example of the guard (its skips and the spike rule included), the torch doctor and the Hessian probe runs."""
from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "lrkit.doctor.fingerprints",
    "lrkit.doctor.guard",
    "lrkit.doctor.guard_skips",
    "lrkit.doctor.guard_state",
    "lrkit.doctor.guarded_watch",
    "lrkit.doctor.interventions",
    "lrkit.doctor.lr_policy",
    "lrkit.doctor.raise_watch",
    "lrkit.doctor.relapse",
    "lrkit.doctor.snapshot_set",
    "lrkit.doctor.snapshots",
    "lrkit.doctor.spikes",
    "lrkit.integrations.torch.dist",
    "lrkit.integrations.torch.doctor",
    "lrkit.integrations.torch.hessian",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name.startswith("lrkit.integrations"):
        pytest.importorskip("torch")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0
