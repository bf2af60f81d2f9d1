"""Weights & Biases runs, as each framework's users log them (offline; the same file an online run
keeps locally): read from ``wandb/*/run-<id>.wandb``, named by project and run name, stepped by the
logger's own step metric, one verdict per run (:mod:`lrkit.doctor.wandb_runs`)."""
from __future__ import annotations

import doctest
import importlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lrkit.doctor import LogFormatError, diagnose, diagnose_runs, find_runs, read_log
from lrkit.doctor.logs import read_run
from lrkit.doctor import wandb_runs

HERE = Path(__file__).resolve().parent


def _need_wandb():
    if os.environ.get("LRKIT_REQUIRE_EXTRAS") == "1":
        importlib.import_module("wandb")  # CI: the dev extra must have it
    else:
        pytest.importorskip("wandb", reason="W&B runs need the wandb package: pip install wandb")


def write_runs(kind: str, where: Path) -> Path:
    """Run ``tests/_wandb_runs.py KIND`` in ``where`` (its own process, as a user's script)."""
    _need_wandb()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, str(HERE / "_wandb_runs.py"), kind, str(where)], capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return where


def lrkit(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "lrkit", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def script_runs(tmp_path_factory):
    return write_runs("script", tmp_path_factory.mktemp("wandb_script"))


def test_module_doctests():
    assert doctest.testmod(wandb_runs).failed == 0


def test_runs_logged_by_hand_are_named_stepped_and_diagnosed(script_runs):
    runs = find_runs(script_runs)
    assert sorted(r.name for r in runs) == ["wandb/digits/broken", "wandb/digits/good"]  # latest-run not again
    verdicts = {name: d.verdict for name, d in diagnose_runs(script_runs).items()}
    assert verdicts == {"wandb/digits/good": "healthy", "wandb/digits/broken": "nan"}
    good = read_run(next(r for r in runs if r.name.endswith("good")))
    assert good.step.tolist() == list(range(100))  # W&B's own _step: one per wandb.log call
    assert good.renamed == {"step": "step", "loss": "train_loss", "lr": "lr", "val_loss": "val_loss"}
    assert good.has("val_loss").sum() == 5 and good.loss[0] == pytest.approx(2.35)
    broken = read_run(next(r for r in runs if r.name.endswith("broken")))
    assert math.isnan(broken.loss[60]) and broken.has("loss")[60]  # a logged nan stays a logged nan


def test_a_run_directory_and_its_file_read_alone(script_runs):
    run_dir = next(d for d in (script_runs / "wandb").iterdir() if d.name.startswith("offline-run-"))
    file = next(run_dir.glob("run-*.wandb"))
    np.testing.assert_array_equal(read_log(run_dir).loss, read_log(file).loss)  # (the broken run's nan too)
    assert len(read_log(file)) == 100
    with pytest.raises(LogFormatError, match=r"holds 2 runs"):
        read_log(script_runs / "wandb")


def test_a_run_cut_short_reads_up_to_its_last_complete_record(script_runs, tmp_path):
    file = next((script_runs / "wandb").glob("offline-run-*/run-*.wandb"))
    whole = read_log(file)
    data = file.read_bytes()
    cut = tmp_path / "run-cut.wandb"
    cut.write_bytes(data[: len(data) * 2 // 3])  # killed while writing: a record torn in two
    part = read_log(cut)
    assert 30 < len(part) < len(whole)
    assert part.loss.tolist() == pytest.approx(whole.loss[: len(part)].tolist(), nan_ok=True)


def test_a_run_that_has_just_started_says_why_it_shows_nothing(script_runs, tmp_path):
    """W&B writes the file 32 KiB at a time: early in a run it holds its header and no history."""
    file = next((script_runs / "wandb").glob("offline-run-*/run-*.wandb"))
    young = tmp_path / "run-young.wandb"
    young.write_bytes(file.read_bytes()[:7])
    with pytest.raises(LogFormatError, match=r"no history in this W&B run yet \(W&B writes its file 32 KiB"):
        read_log(young)


def test_a_file_that_is_not_a_wandb_run_says_so(tmp_path):
    _need_wandb()
    bad = tmp_path / "run-x.wandb"
    bad.write_bytes(b"not a run")
    with pytest.raises(LogFormatError, match=r"run-x.wandb: not a W&B run file"):
        read_log(bad)
    r = lrkit("diagnose", bad)
    assert r.returncode == 2 and "not a W&B run file" in r.stderr and "Traceback" not in r.stderr


def test_cli_one_verdict_per_run_and_run_picks_one(script_runs):
    r = lrkit("diagnose", script_runs)
    assert r.returncode == 0, r.stderr
    assert "wandb/digits/good: HEALTHY" in r.stdout and "wandb/digits/broken: NAN" in r.stdout
    r = lrkit("diagnose", script_runs, "--run", "wandb/digits/broken")
    assert r.returncode == 0 and r.stdout.startswith(f"{script_runs}: wandb/digits/broken: NAN"), r.stdout


def test_a_resumed_run_is_one_run_its_parts_joined(tmp_path):
    where = write_runs("resumed", tmp_path)
    assert len(list((where / "wandb").glob("offline-run-*"))) == 4  # two runs, two parts each
    runs = find_runs(where)
    assert sorted(r.name for r in runs) == ["wandb/digits/long", "wandb/digits/plain"]
    long_run = read_run(next(r for r in runs if r.name.endswith("long")))
    # resumed from its step-40 checkpoint after logging step 59: what it logged again replaces 40-59
    assert long_run.step.tolist() == list(range(100))
    assert long_run.loss[45] == pytest.approx(2.3 * 0.97**45 + 0.05)
    plain = read_run(next(r for r in runs if r.name.endswith("plain")))
    assert plain.step.tolist() == list(range(110))  # W&B's _step starts again offline: the parts follow
    assert plain.loss[60:].tolist() == pytest.approx([2.3 * 0.97**t + 0.05 for t in range(60, 110)])
    verdicts = {name: (d.verdict, d.step) for name, d in diagnose_runs(where).items()}
    assert verdicts == {"wandb/digits/long": ("nan", 90), "wandb/digits/plain": ("healthy", None)}
    second = sorted((where / "wandb").glob("offline-run-*-long-id"))[-1]
    assert read_log(second).step.tolist() == list(range(100))  # either part's directory reads the whole run


def test_trainer_report_to_wandb(tmp_path):
    """The Trainer logs its own train/global_step (W&B's _step counts log calls) and its model
    configuration (the chance level); a run that saved a checkpoint is read from its
    trainer_state.json, not a second time from W&B."""
    write_runs("trainer", tmp_path)
    assert [r.name for r in find_runs(tmp_path)] == ["bert/checkpoint-64/trainer_state.json",
                                                      "wandb/huggingface/digits"]
    wandb_dir = tmp_path / "wandb"
    runs = {r.name: r for r in find_runs(wandb_dir)}  # the wandb folder alone: both
    assert set(runs) == {"huggingface/digits", "huggingface/bert"}
    digits, bert = read_run(runs["huggingface/digits"]), read_run(runs["huggingface/bert"])
    assert digits.step[digits.has("loss")].tolist() == list(range(4, 65, 4))  # optimizer steps, not log calls
    assert digits.has("val_loss").sum() == 4 and digits.renamed["val_loss"] == "eval/loss"
    assert digits.renamed["grad_norm"] == "train/grad_norm" and digits.renamed["lr"] == "train/learning_rate"
    assert digits.chance_loss is None  # a plain torch module has no configuration
    assert bert.chance_loss == pytest.approx(math.log(3))  # from the logged model configuration
    assert diagnose(digits).verdict == "healthy"


def test_lightning_wandb_logger(tmp_path):
    """WandbLogger steps by trainer/global_step and logs each epoch's validation in a call of its own.
    SGD-momentum at LR 40 thrashes from its first logged row (33-134, validation 58, 86, 64, 71 over
    four epochs): too high, not too low (it read flat, "raise the LR")."""
    write_runs("lightning", tmp_path)
    runs = {r.name: r for r in find_runs(tmp_path)}
    assert set(runs) == {"wandb/digits/calm", "wandb/digits/absurd"}
    calm = read_run(runs["wandb/digits/calm"])
    assert calm.step[0] == 4 and calm.has("val_loss").sum() == 4 and calm.renamed["loss"] == "train_loss"
    verdicts = {n: d for n, d in diagnose_runs(tmp_path).items()}
    assert verdicts["wandb/digits/calm"].verdict == "healthy"
    absurd = verdicts["wandb/digits/absurd"]
    assert absurd.verdict == "diverging" and absurd.advice[0].startswith("lower the LR"), absurd.message


def test_keras_wandb_metrics_logger(tmp_path):
    """WandbMetricsLogger logs epoch/loss, epoch/val_loss and epoch/learning_rate by epoch/epoch (its
    default), or batch/loss and batch/learning_rate by batch/batch_step with the epoch's keys after
    each epoch's last batch (log_freq="batch")."""
    write_runs("keras", tmp_path)
    runs = {r.name: read_run(r) for r in find_runs(tmp_path)}
    assert set(runs) == {"wandb/digits/keras-epoch", "wandb/digits/keras-batch"}
    per_epoch, per_batch = runs["wandb/digits/keras-epoch"], runs["wandb/digits/keras-batch"]
    assert per_epoch.renamed == {"step": "step", "loss": "loss", "lr": "learning_rate", "val_loss": "val_loss"}
    assert per_epoch.step.tolist() == list(range(12)) and per_epoch.lr[0] == pytest.approx(1e-3)
    assert len(per_batch) == 4 * 44 and per_batch.renamed["loss"] == "loss"
    assert per_batch.step[per_batch.has("val_loss")].tolist() == [43, 87, 131, 175]  # each epoch's last batch
    assert diagnose(per_epoch).verdict == "healthy" and diagnose(per_batch).verdict == "healthy"


def test_without_wandb_the_run_says_what_to_install(script_runs):
    """The records are parsed with wandb's own classes: without the package, one clear line."""
    code = ("import sys; sys.modules['wandb'] = None; sys.modules['wandb.proto'] = None\n"
            "from lrkit.doctor import diagnose_runs\n"
            f"for name, d in diagnose_runs({str(script_runs / 'wandb')!r}).items():\n"
            "    print(name, getattr(d, 'verdict', d))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and all("reading a W&B run needs the wandb package: pip install wandb" in line
                                   for line in lines), r.stdout + r.stderr
