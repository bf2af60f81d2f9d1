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
from hypothesis import settings

# Property tests explore fresh examples on every developer run; CI (HYPOTHESIS_PROFILE=ci, set in
# .ci/run) replays a fixed derivation so a red build is reproducible and not a coin toss.
settings.register_profile("dev", print_blob=True)
settings.register_profile("ci", derandomize=True, print_blob=True, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data when present (developer machines); skip with a reason otherwise."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA} (only on lrkit developer machines)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def no_guard_leftovers():
    """No guard's snapshot directory or temporary file outlives the test that made it.

    Checks the run directories this process created (``lrkit.doctor.storage.live_run_dirs``)
    and this process's ``lrkit-guard-<pid>-*`` temporary directories, after a garbage collection
    (a guard nobody closed is cleaned up when collected, as in a real program).
    """
    import gc
    import tempfile

    from lrkit.doctor import storage

    prefix = f"{storage.TEMP_PREFIX}{os.getpid()}-"
    tmp = Path(tempfile.gettempdir())
    before_dirs = storage.live_run_dirs()
    before_tmp = {p.name for p in tmp.glob(prefix + "*")}
    yield

    def leftovers() -> list[str]:
        return sorted(storage.live_run_dirs() - before_dirs) + sorted(
            {p.name for p in tmp.glob(prefix + "*")} - before_tmp)

    if leftovers():  # collect only when something is left (a collection per test costs time)
        gc.collect()
    left = leftovers()
    assert not left, f"guard storage left behind: {left}"
