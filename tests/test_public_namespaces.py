"""One public door per framework: lrkit.torch, lrkit.keras, lrkit.jax, lrkit.lightning, lrkit.transformers.

Pins each door's surface, checks every name resolves to the adapter that defines it, and that the
README only ever shows the public doors (never ``lrkit.integrations``, which is internal).
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

DOORS = {
    "lrkit.torch": ("torch", {
        "find_lr", "TorchTrainer", "TorchSnapshot", "to_torch", "LRKitScheduler",
        "TorchDoctor", "StabilityProbe", "grad_norm", "stability_report",
        "autopilot", "TorchAutopilot", "AutopilotScheduler", "combine", "CombinedOptimizer",
    }),
    "lrkit.keras": ("keras", {
        "find_lr", "find_lr_keras", "KerasTrainer", "KerasSnapshot", "to_keras", "LRKitSchedule",
        "PlateauCallback", "LRDoctorCallback", "AutopilotCallback",
    }),
    "lrkit.jax": ("optax", {
        "find_lr", "find_lr_optax", "OptaxTrainer", "OptaxSnapshot", "to_optax", "OptaxSchedule",
        "plateau_transform", "autopilot", "OptaxAutopilot",
    }),
    "lrkit.lightning": ("lightning", {"LRDoctorCallback", "AutopilotCallback", "LRFinder"}),
    "lrkit.transformers": ("transformers", {"LRDoctorCallback", "find_lr", "AutopilotCallback"}),
}

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("door", sorted(DOORS))
def test_door_surface_is_pinned_and_resolves(door):
    framework, expected = DOORS[door]
    pytest.importorskip(framework)
    module = importlib.import_module(door)
    assert set(module.__all__) == expected
    for name in expected:
        value = getattr(module, name)
        assert value is not None
        if name not in ("find_lr",) and hasattr(value, "__module__"):
            # defined in this framework's adapter folder, not re-exported from another framework
            assert value.__module__.startswith(f"lrkit.integrations.{door.split('.')[1]}.") or \
                value.__module__.startswith("lrkit.integrations.torch."), (name, value.__module__)


def test_top_level_shortcuts_are_the_doors_objects():
    pytest.importorskip("torch")
    import lrkit
    import lrkit.torch

    assert lrkit.find_lr is lrkit.torch.find_lr
    assert lrkit.TorchTrainer is lrkit.torch.TorchTrainer


def test_readme_shows_only_public_imports():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    internal = re.findall(r"lrkit\.integrations[\w.]*", text)
    assert not internal, f"README imports internal modules: {sorted(set(internal))}"
