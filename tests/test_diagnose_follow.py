"""``lrkit diagnose --follow``: a run still training, watched from its log (lrkit.cli._follow)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest


def grow(path, rows, pause=0.03, start=0.3):
    """Append ``rows`` to ``path`` one by one, as a training run writes its log."""
    def write():
        time.sleep(start)
        for row in rows:
            with open(path, "a") as fh:
                fh.write(row)
            time.sleep(pause)
    t = threading.Thread(target=write, daemon=True)
    t.start()
    return t


def follow(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "lrkit", "diagnose", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_a_growing_log_is_reported_when_its_verdict_changes(tmp_path):
    log = tmp_path / "metrics.csv"
    log.write_text("step,loss,lr\n" + "".join(f"{t},{2.3 * 0.9 ** t + 0.05},0.1\n" for t in range(30)))
    proc = subprocess.Popen([sys.executable, "-m", "lrkit", "diagnose", str(log), "--follow", "0.1", "--idle", "1.5",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = json.loads(proc.stdout.readline())  # said while the run is still healthy
    assert first["verdict"] == "healthy" and first["rows"] == 30 and first["run"] == str(log)
    grow(log, [f"{t},{2.3 * 0.9 ** t + 0.05 if t < 60 else 'nan'},0.1\n" for t in range(30, 70)], start=0).join()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    last = json.loads(out.splitlines()[-1])
    assert last["verdict"] == "nan" and last["step"] == 60 and last["rows"] >= 61


def test_text_lines_and_the_last_verdicts(tmp_path):
    log = tmp_path / "metrics.csv"
    log.write_text("step,loss\n" + "".join(f"{t},{2.3 * 0.9 ** t + 0.05}\n" for t in range(40)))
    r = follow(log, "--follow", "0.1", "--idle", "0.5", "--fail-on-problem")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0].endswith(f"{log}: HEALTHY after 40 rows")  # said once: the log did not change
    assert sum("HEALTHY after" in x for x in out) == 1
    assert f"{log}: stopped following; last verdicts:" in out and f"{log}: HEALTHY" in out


def test_a_run_that_starts_later_in_the_folder_joins(tmp_path):
    runs = tmp_path / "runs"
    (runs / "a").mkdir(parents=True)
    (runs / "a" / "log.csv").write_text("step,loss\n" + "".join(f"{t},{2.3 * 0.9 ** t}\n" for t in range(30)))

    def second():
        time.sleep(0.8)
        (runs / "b").mkdir()
        (runs / "b" / "log.csv").write_text("step,loss\n0,2.3\n1,nan\n")
    t = threading.Thread(target=second, daemon=True)
    t.start()
    r = follow(runs, "--follow", "0.1", "--idle", "2", "--fail-on-problem")
    t.join()
    assert r.returncode == 1, r.stderr  # a run ended with a problem
    assert "a/log.csv: HEALTHY after 30 rows" in r.stdout and "b/log.csv: NAN since step 1" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--follow", "0"], "--follow must be a number of seconds > 0, got 0.0"),
    (["--follow", "1", "--idle", "-1"], "--idle must be a number of seconds > 0, got -1.0"),
    (["--follow", "1", "--plot", "x.png"], "--plot draws a finished run; run it without --follow"),
])
def test_bad_follow_options(tmp_path, args, message):
    log = tmp_path / "m.csv"
    log.write_text("step,loss\n0,1.0\n")
    r = follow(log, *args)
    assert r.returncode == 2 and r.stderr.strip() == f"lrkit: error: {message}" and r.stdout == ""


def test_follow_refuses_standard_input():
    r = subprocess.run([sys.executable, "-m", "lrkit", "diagnose", "-", "--follow", "1"], input="step,loss\n0,1\n",
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "standard input can be read once" in r.stderr


def test_a_loss_below_the_floor_is_said_not_a_traceback(tmp_path):
    log = tmp_path / "nll.csv"
    log.write_text("step,loss\n" + "".join(f"{t},{1.0 - 0.1 * t}\n" for t in range(20)))  # goes below 0
    r = follow(log, "--follow", "0.1", "--idle", "0.5")
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert f"{log}: NOT READ (" in r.stdout and "pass --loss-floor" in r.stdout
