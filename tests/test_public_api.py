"""The public surface of `import lrkit`: every advertised name resolves, and nothing else leaks."""
import subprocess
import sys

import pytest

import lrkit

EXPECTED = {
    "Schedule", "schedules", "scaling", "__version__",
    "find_lr", "TorchTrainer", "find_lr_keras", "KerasTrainer", "find_lr_optax", "OptaxTrainer",
    "FinderResult", "run_range_test", "suggest", "Suggestion",
    "classic_suggestions", "Trainer",
    "Doctor", "Diagnosis", "diagnose", "read_log", "LogRecords", "LogFormatError",
    "Guard", "GuardGaveUp", "Intervention", "stability_report",
    "optimizer_family", "default_lr", "lr_range", "scale_lr", "warmup_steps_for",
    "tune",
}


def test_all_is_pinned():
    assert set(lrkit.__all__) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_public_name_resolves(name):
    pytest.importorskip("torch")
    if name in ("find_lr_keras", "KerasTrainer"):
        pytest.importorskip("keras")  # (KERAS_BACKEND=torch from conftest)
    if name in ("find_lr_optax", "OptaxTrainer"):
        pytest.importorskip("optax")
    assert getattr(lrkit, name) is not None


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        lrkit.no_such_thing  # noqa: B018


def test_import_lrkit_does_not_import_frameworks():
    code = (
        "import sys, lrkit; lrkit.schedules.cosine(base_lr=0.1, total_steps=10)(3); "
        "heavy = [m for m in ('torch', 'keras', 'jax', 'optax', 'matplotlib', 'typer', 'rich', 'optuna') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_python_dash_m_lrkit_is_the_cli():
    out = subprocess.run([sys.executable, "-m", "lrkit", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("schedule", "find", "diagnose", "demo"):
        assert command in out.stdout


def test_a_missing_optional_dependency_is_one_line_and_exit_2(tmp_path):
    # a sitecustomize that hides scikit-learn, as on a machine without the `examples` extra
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'sklearn':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
    import os

    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "lrkit", "find", "--json"], capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "lrkit: error: this command needs the package 'sklearn', which is not installed: pip install 'lrkit[examples]'"
    ]
