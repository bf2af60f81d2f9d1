"""Every script in examples/ runs to the end (small sizes: LRKIT_EXAMPLE_SMALL=1) and is linked in its README."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))
NEEDS = {"pytorch": ("torch",), "lightning": ("torch", "lightning"), "hf": ("torch", "transformers"),
         "keras": ("keras",), "jax": ("jax", "optax"), "flax": ("jax", "optax", "flax")}

pytestmark = pytest.mark.slow


def test_the_five_frameworks_have_an_example():
    names = {p.name for p in EXAMPLES}
    assert {"pytorch_loop.py", "lightning_module.py", "hf_trainer.py", "keras_fit.py", "jax_optax.py"} <= names


def test_every_example_is_linked_from_the_folders_readme():
    readme = (ROOT / "examples" / "README.md").read_text(encoding="utf-8")
    assert [p.name for p in EXAMPLES if f"]({p.name})" not in readme] == []


RUN_HERE = [p for p in EXAMPLES if not p.name.startswith("autopilot_")]  # those: tests/test_autopilot_examples.py


@pytest.mark.parametrize("script", RUN_HERE, ids=[p.name for p in RUN_HERE])
def test_example_runs(script):
    for key, modules in NEEDS.items():
        if key in script.stem:
            for module in modules:
                pytest.importorskip(module)
    pytest.importorskip("sklearn")
    env = {**os.environ, "LRKIT_EXAMPLE_SMALL": "1", "OMP_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu",
           "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "torch"), "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900, env=env,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert "doctor:" in last, out.stdout[-2000:]


def test_the_ddp_example_runs_under_torchrun_on_two_processes():
    """examples/pytorch_ddp.py the way DDP users launch it: torchrun, two CPU processes (gloo)."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    env = {**os.environ, "LRKIT_EXAMPLE_SMALL": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    script = ROOT / "examples" / "pytorch_ddp.py"
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script)], capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert "on 2 process(es)" in last and "doctor:" in last, out.stdout[-2000:]
