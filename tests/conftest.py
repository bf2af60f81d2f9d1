"""Shared test set-up: deterministic, single-threaded frameworks, headless plotting."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

try:  # keep each xdist worker on one core; the machine has two
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - the pure core is tested without torch too
    pass

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data when present (developer machines); skip with a reason otherwise."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA} (only on lrkit developer machines)")
    return SHARED_DATA
