"""CI must not pass green by skipping: with LRKIT_REQUIRE_EXTRAS=1 (set in .ci/run) every
framework of the ``dev`` extra has to import, so no test of it was skipped for want of it."""
import importlib
import importlib.util
import os

import pytest

DEV_MODULES = [
    "torch", "keras", "jax", "optax", "optuna", "lightning", "transformers", "tensorboard",
    "matplotlib", "rich", "typer", "sklearn", "hypothesis", "prodigyopt", "torch_lr_finder", "ray", "psycopg",
    "mlflow", "yaml", "flax", "equinox", "wandb", "peft", "jsonargparse", "bitsandbytes", "torchao",
]
#: installed, not imported here: its tests run it in their own processes (KERAS_BACKEND=tensorflow)
DEV_MODULES_FOUND = ["tensorflow"]


@pytest.mark.skipif(os.environ.get("LRKIT_REQUIRE_EXTRAS") != "1",
                    reason="only CI requires every optional framework (LRKIT_REQUIRE_EXTRAS=1)")
@pytest.mark.parametrize("module", DEV_MODULES)
def test_every_dev_framework_imports_in_ci(module):
    importlib.import_module(module)



@pytest.mark.skipif(os.environ.get("LRKIT_REQUIRE_EXTRAS") != "1",
                    reason="only CI requires every optional framework (LRKIT_REQUIRE_EXTRAS=1)")
@pytest.mark.parametrize("module", DEV_MODULES_FOUND)
def test_every_dev_framework_run_in_subprocesses_is_installed_in_ci(module):
    assert importlib.util.find_spec(module) is not None, f"{module} is not installed"
