"""A directory's runs are not looked for in hidden directories, virtual environments or installed
packages: ``lrkit diagnose .`` in a project's root listed the CSV files of its ``.venv``'s packages
(matplotlib's sample data, NumPy's test tables) as runs (:mod:`lrkit.doctor.walk`)."""
from __future__ import annotations

import doctest
import subprocess
import sys

from lrkit.doctor import find_runs
from lrkit.doctor import walk


def _log(path, rows=30):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("step,loss\n" + "".join(f"{t},{2.3 * 0.97 ** t}\n" for t in range(rows)))


def _project(root):
    _log(root / "lightning_logs" / "version_0" / "metrics.csv")
    _log(root / "logs" / "run.csv")
    for noise in (".venv/lib/python3.11/site-packages/matplotlib/mpl-data/sample_data/msft.csv",
                  ".git/logs/HEAD.csv", ".ipynb_checkpoints/run-checkpoint.csv",
                  "venv/lib/python3.11/site-packages/numpy/data.csv", "env/data.csv",
                  "node_modules/pkg/table.csv", "pkg/__pycache__/x.csv", "site-packages/x.csv"):
        _log(root / noise)
    (root / "env" / "pyvenv.cfg").write_text("home = /usr/bin\n")  # a virtual environment named env


def test_the_modules_example():
    assert doctest.testmod(walk).failed == 0


def test_only_the_projects_own_logs_are_runs(tmp_path):
    _project(tmp_path)
    assert [r.name for r in find_runs(tmp_path)] == ["lightning_logs/version_0/metrics.csv", "logs/run.csv"]


def test_a_hidden_directory_given_is_searched(tmp_path):
    _log(tmp_path / ".runs" / "a" / "log.csv")
    assert [r.name for r in find_runs(tmp_path)] == []
    assert [r.name for r in find_runs(tmp_path / ".runs")] == ["a/log.csv"]


def test_cli_in_a_projects_root(tmp_path):
    _project(tmp_path)
    r = subprocess.run([sys.executable, "-m", "lrkit", "diagnose", "."], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(".: 2 runs") and "site-packages" not in r.stdout and "pyvenv" not in r.stdout
