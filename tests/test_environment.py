"""CI must not pass green by skipping: with LRKIT_REQUIRE_EXTRAS=1 (set in .ci/run) every
framework of the ``dev`` extra has to import, so no test of it was skipped for want of it."""
import importlib
import os

import pytest

DEV_MODULES = [
    "torch", "keras", "jax", "optax", "optuna", "lightning", "transformers", "tensorboard",
    "matplotlib", "rich", "typer", "sklearn", "hypothesis", "prodigyopt", "torch_lr_finder", "ray", "psycopg",
    "mlflow", "yaml",
]


@pytest.mark.skipif(os.environ.get("LRKIT_REQUIRE_EXTRAS") != "1",
                    reason="only CI requires every optional framework (LRKIT_REQUIRE_EXTRAS=1)")
@pytest.mark.parametrize("module", DEV_MODULES)
def test_every_dev_framework_imports_in_ci(module):
    importlib.import_module(module)

