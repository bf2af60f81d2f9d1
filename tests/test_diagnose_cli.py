"""`lrkit diagnose` through a real subprocess: exit codes, one-line errors, JSON, the plot."""
import json
import math
import subprocess
import sys

import pytest


def lrkit(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "lrkit", *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    d = tmp_path_factory.mktemp("logs")
    div = d / "div.csv"
    rows = ["step,loss,lr"]
    for t in range(300):
        loss = 2.3 * math.exp(-t / 30) + 0.1 if t < 200 else 0.1 * 1.1 ** (t - 200)
        rows.append(f"{t},{loss},0.3")
    div.write_text("\n".join(rows) + "\n")
    ok = d / "ok.jsonl"
    ok.write_text("\n".join(json.dumps({"step": t, "loss": 2.3 * math.exp(-t / 40) + 0.05, "lr": 0.01}) for t in range(200)))
    bad = d / "bad.csv"
    bad.write_text("step,loss,lr\n0,2.3,0.1\n1,2.0,0.1\n2,abc,0.1\n")
    nll = d / "nll.csv"  # a negative log-likelihood: below zero, bounded below by -10
    nll.write_text("step,loss\n" + "".join(f"{t},{-9.0 + 8.0 * math.exp(-t / 30)}\n" for t in range(200)))
    return d


def test_json_output_parses_and_carries_the_verdict(logs, tmp_path):
    png = tmp_path / "div.png"
    r = lrkit("diagnose", logs / "div.csv", "--json", "--plot", png)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"verdict", "step", "detected_at", "advice", "evidence", "message"} <= set(out)
    assert out["verdict"] == "diverging"
    assert 195 <= out["step"] <= 202 and out["detected_at"] > out["step"]
    assert out["advice"][0] == "lower the LR about 10x, from 0.3 to 0.03"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_negative_losses_are_diagnosed_with_a_loss_floor(logs):
    r = lrkit("diagnose", logs / "nll.csv", "--loss-floor", "-10", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["verdict"] == "healthy"


def test_human_summary_and_exit_codes(logs):
    r = lrkit("diagnose", logs / "ok.jsonl")
    assert r.returncode == 0 and r.stdout.startswith(f"{logs / 'ok.jsonl'}: HEALTHY")
    r = lrkit("diagnose", logs / "div.csv")
    assert r.returncode == 0 and "DIVERGING" in r.stdout and "lower the LR about 10x" in r.stdout
    assert lrkit("diagnose", logs / "div.csv", "--fail-on-problem").returncode == 1
    assert lrkit("diagnose", logs / "ok.jsonl", "--fail-on-problem").returncode == 0


@pytest.mark.parametrize(
    "args, expected",
    [
        (["bad.csv"], "bad.csv:4: column 'loss' is not a number: 'abc'"),
        (["missing.csv"], "missing.csv: no such file or directory"),
        (["div.csv", "--plot", "x.txt"], "--plot: expected a .png, .pdf or .svg file name"),
        (["div.csv", "--window", "2"], "window must be an int >= 5, got 2"),
        (["nll.csv"], "nll.csv: the loss goes down to -8.9"),
        (["nll.csv", "--loss-floor", "-5"], "is below --loss-floor -5"),
        (["div.csv", "--loss-floor", "nan"], "--loss-floor must be a finite number"),
        (["div.csv", "--metric-mode", "val_acc=up"], "--metric-mode must be NAME=max, NAME=min or NAME=ignore, got 'val_acc=up'"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_2(logs, args, expected):
    args = [str(logs / a) if a.endswith((".csv",)) else a for a in args]
    r = lrkit("diagnose", *args)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrkit: error: ")
    assert expected in lines[0]
    assert "Traceback" not in r.stderr


def test_json_on_a_csv_whose_accuracy_swings_says_fluctuating(tmp_path):
    # a smooth training loss; the validation accuracy jumps between 0.35 and 0.92 every epoch
    p = tmp_path / "swing.csv"
    rows = ["epoch,loss,accuracy,val_accuracy,lr"]
    for e in range(20):
        rows.append(f"{e},{2.3 * 0.85 ** e + 0.05:.5f},{0.5 + 0.4 * (1 - 0.85 ** e):.4f},{[0.35, 0.92][e % 2]},0.03")
    p.write_text("\n".join(rows) + "\n")
    r = lrkit("diagnose", p, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["verdict"] == "fluctuating"
    assert out["step"] == 2 and out["detected_at"] == 5
    assert "oscillating_metric:val_accuracy" in out["evidence"] and "'val_accuracy'" in out["message"]
    assert out["evidence"]["metric_amplitude"] > 0.5 and out["evidence"]["metric_best_gain"] <= 0
    assert out["advice"][0] == "lower the LR about 3x, from 0.03 to 0.01"
    r = lrkit("diagnose", p, "--fail-on-problem")
    assert r.returncode == 1 and "FLUCTUATING" in r.stdout and "metric_oscillation_ratio=" in r.stdout
    # told to ignore that column, the same log is healthy
    r = lrkit("diagnose", p, "--json", "--metric-mode", "val_accuracy=ignore")
    assert r.returncode == 0 and json.loads(r.stdout)["verdict"] == "healthy"


def test_report_page_of_a_diverging_log(tmp_path):
    import numpy as np

    loss = np.concatenate([2.0 * np.exp(-np.arange(60) / 20), 0.2 * np.exp(np.arange(30) / 6)])
    log = tmp_path / "run.csv"
    log.write_text("step,loss,lr\n" + "".join(f"{i},{v},0.1\n" for i, v in enumerate(loss)))
    out = subprocess.run([sys.executable, "-m", "lrkit", "diagnose", str(log), "--report", str(tmp_path / "rep")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "Verdict: <b id=\"verdict\">diverging</b> from step 59" in page and "data:image/png;base64," in page
    assert "lower the LR about 10x" in page and "--report" in page  # the advice, and the command that made it


def test_chance_loss_turns_a_collapse_into_diverging_and_bad_values_are_one_line(tmp_path):
    """A binary classifier logged every 10 steps that blew up in its first interval and came back
    only to ln 2: healthy-looking without the chance level, diverging with --chance-loss."""
    rows = [2.0, 1.2, 0.98, 0.95, 1.38, 1.17] + [0.72, 0.70, 0.74, 0.71, 0.73, 0.69] * 3
    log = tmp_path / "collapse.csv"
    log.write_text("step,loss\n" + "".join(f"{10 * (i + 1)},{v}\n" for i, v in enumerate(rows)))
    assert json.loads(lrkit("diagnose", log, "--json").stdout)["verdict"] != "diverging"
    out = json.loads(lrkit("diagnose", log, "--json", "--chance-loss", math.log(2)).stdout)
    assert out["verdict"] == "diverging" and "chance level" in out["message"]
    r = lrkit("diagnose", log, "--chance-loss", "-1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == ["lrkit: error: --chance-loss must be a finite number above --loss-floor "
                                             "(0.0), got -1.0"]
