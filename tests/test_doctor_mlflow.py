"""``lrkit diagnose`` on MLflow runs: the SQLite store MLflow 3 writes by default, the ``mlruns/``
file store of Lightning's ``MLFlowLogger``, the Trainer's ``report_to="mlflow"``, and a real
tracking server over HTTP."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")

from lrkit.doctor import LogFormatError, diagnose, diagnose_runs, find_runs, read_log  # noqa: E402
from lrkit.doctor.logs import read_run  # noqa: E402


def lrkit(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "lrkit", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def decaying(t: int) -> float:
    return 2.3 * 0.97**t + 0.05


def log_runs(uri: str) -> dict[str, str]:
    """Runs logged with MLflow's own client: a healthy one, one whose loss turns NaN at step 60,
    two runs sharing a name, a deleted one. Returns run name -> id."""
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("digits")
    ids = {}
    for name, nan_at in (("good", None), ("broken", 60), ("twin", None), ("twin", None), ("gone", None)):
        run = client.create_run(exp, run_name=name)
        rid = run.info.run_id
        ids[name if name not in ids else name + "2"] = rid
        ms = []
        for t in range(120):
            loss = math.nan if nan_at is not None and t >= nan_at else decaying(t)
            ms.append(mlflow.entities.Metric("train_loss", loss, 1000 + t, t))
            ms.append(mlflow.entities.Metric("lr", 0.1, 1000 + t, t))
            if t % 20 == 19:
                ms.append(mlflow.entities.Metric("val_loss", decaying(t) * 1.1, 1000 + t, t))
        client.log_batch(rid, metrics=ms)
        client.set_terminated(rid)
    client.delete_run(ids["gone"])
    return ids


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("sq")
    ids = log_runs(f"sqlite:///{d / 'mlflow.db'}")
    return d, ids


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- the SQLite store
def test_sqlite_store_runs_are_named_and_diagnosed(sqlite_store):
    d, ids = sqlite_store
    before = digest(d / "mlflow.db")
    runs = find_runs(d)
    twin1, twin2 = ids["twin"][:8], ids["twin2"][:8]
    assert [r.name for r in runs] == ["mlflow.db/digits/good", "mlflow.db/digits/broken",
                                      f"mlflow.db/digits/twin ({twin1})", f"mlflow.db/digits/twin ({twin2})"]
    verdicts = {name: v.verdict for name, v in diagnose_runs(d).items()}
    assert verdicts["mlflow.db/digits/good"] == "healthy" and verdicts["mlflow.db/digits/broken"] == "nan"
    recs = read_run(runs[1])
    assert len(recs) == 120 and recs.renamed["loss"] == "train_loss" and recs.has("val_loss").sum() == 6
    assert math.isnan(recs.loss[60]) and recs.loss[59] == pytest.approx(decaying(59))
    assert digest(d / "mlflow.db") == before  # read-only: the user's database is untouched
    # the same store named by its file, and by its tracking URI
    assert [r.name for r in find_runs(d / "mlflow.db")][:2] == ["digits/good", "digits/broken"]
    uri = f"sqlite:///{d / 'mlflow.db'}"
    assert diagnose_runs(uri)["digits/broken"].verdict == "nan"
    with pytest.raises(LogFormatError, match=r"holds 4 runs \(digits/good, digits/broken, .*--run NAME"):
        read_log(uri)


def test_a_step_logged_twice_keeps_its_latest_value_and_infinity_survives(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    rid = client.create_run(client.create_experiment("e"), run_name="r").info.run_id
    client.log_metric(rid, "loss", 2.0, timestamp=10, step=0)
    client.log_metric(rid, "loss", 1.5, timestamp=20, step=0)  # the same step again, later
    client.log_metric(rid, "loss", math.inf, timestamp=30, step=1)
    client.log_metric(rid, "grad_norm", 0.5, timestamp=30, step=1)
    recs = read_log(tmp_path / "mlflow.db")
    assert recs.loss[0] == 1.5 and recs.loss[1] == math.inf and recs.grad_norm.tolist()[1] == 0.5


def test_an_sqlite_file_that_is_not_mlflow_is_not_a_run(tmp_path):
    optuna = pytest.importorskip("optuna")
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="s")
    (tmp_path / "log.csv").write_text("step,loss\n" + "".join(f"{t},{decaying(t)}\n" for t in range(30)))
    assert [r.name for r in find_runs(tmp_path)] == ["log.csv"]
    r = lrkit("diagnose", f"sqlite:///{tmp_path / 'optuna.db'}")
    assert r.returncode == 2 and "not an MLflow database" in r.stderr and "Traceback" not in r.stderr
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    mlflow.MlflowClient(empty).search_experiments()  # an MLflow database with no run
    r = lrkit("diagnose", empty)
    assert r.returncode == 2 and "no runs in this MLflow store" in r.stderr
    r = lrkit("diagnose", f"sqlite:///{tmp_path / 'missing.db'}")
    assert r.returncode == 2 and "no such database file" in r.stderr
    assert not (tmp_path / "missing.db").exists()  # nothing created


def test_cli_one_verdict_per_run_and_run_picks_one(sqlite_store, tmp_path):
    d, ids = sqlite_store
    r = lrkit("diagnose", d, "--json", "--fail-on-problem")
    assert r.returncode == 1, r.stderr
    out = {x["run"]: x["verdict"] for x in json.loads(r.stdout)["runs"]}
    assert out["mlflow.db/digits/good"] == "healthy" and out["mlflow.db/digits/broken"] == "nan"
    png = tmp_path / "broken.png"
    r = lrkit("diagnose", d / "mlflow.db", "--run", "digits/broken", "--plot", png)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{d / 'mlflow.db'}: digits/broken: NAN") and png.stat().st_size > 0
    r = lrkit("diagnose", d, "--run", ids["good"], "--json")  # a run id picks it too
    assert r.returncode == 0 and json.loads(r.stdout)["verdict"] == "healthy"
    r = lrkit("diagnose", d, "--plot", tmp_path / "x.png")
    assert r.returncode == 2 and "pick one with --run: mlflow.db/digits/good" in r.stderr
    r = lrkit("diagnose", d, "--run", "digits/nope")
    assert r.returncode == 2 and "no run named 'digits/nope'; its runs are: mlflow.db/digits/good" in r.stderr
    log = tmp_path / "one.csv"
    log.write_text("step,loss\n0,1.0\n1,0.9\n")
    r = lrkit("diagnose", log, "--run", "x")
    assert r.returncode == 2 and "--run picks one run of a directory or an MLflow store" in r.stderr


def test_local_stores_need_no_mlflow(sqlite_store):
    """Reading a local store is plain SQLite; only a server needs the mlflow package."""
    d, _ = sqlite_store
    code = ("import sys; sys.modules['mlflow'] = None\n"
            "from lrkit.doctor import diagnose_runs, LogFormatError\n"
            f"print(diagnose_runs({str(d)!r})['mlflow.db/digits/broken'].verdict)\n"
            "try:\n    diagnose_runs('http://127.0.0.1:9')\nexcept LogFormatError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "nan", "http://127.0.0.1:9: reading runs from an MLflow server needs mlflow (pip install mlflow-skinny)"]


# ----------------------------------------------------------------------------- Lightning's file store
def test_lightning_mlflow_logger_file_store(tmp_path, monkeypatch):
    pl = pytest.importorskip("lightning.pytorch")
    import torch
    from lightning.pytorch.loggers import MLFlowLogger

    from test_doctor_integrations_lightning import Regression, data

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what MLflow 3 asks of file-store users
    torch.set_num_threads(1)

    class Logged(Regression):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("train_loss", loss)
            return loss

    for name, module in (("calm", Logged(0.01)), ("nan", Logged(0.01, nan_at=40))):
        logger = MLFlowLogger(experiment_name="regression", run_name=name)  # default: file:./mlruns
        trainer = pl.Trainer(max_steps=80, accelerator="cpu", devices=1, enable_progress_bar=False, logger=logger,
                             log_every_n_steps=5, enable_checkpointing=False, enable_model_summary=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(module, data())
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    runs = find_runs(tmp_path)
    assert [r.name for r in runs] == ["mlruns/regression/calm", "mlruns/regression/nan"]
    verdicts = {n: v.verdict for n, v in diagnose_runs(tmp_path).items()}
    assert verdicts == {"mlruns/regression/calm": "healthy", "mlruns/regression/nan": "nan"}
    recs = read_run(runs[1])
    assert recs.renamed["loss"] == "train_loss" and recs.step.tolist()[:3] == [4, 9, 14]
    # read from inside the store: an experiment's directory, one run's directory
    nan_dir = next(p.parent for p in (tmp_path / "mlruns").glob(f"*/{runs[1].store.run_id}/meta.yaml"))
    assert [r.name for r in find_runs(nan_dir.parent)] == ["regression/calm", "regression/nan"]
    assert diagnose(nan_dir).verdict == "nan"
    r = lrkit("diagnose", nan_dir)
    assert r.returncode == 0 and r.stdout.startswith(f"{nan_dir}: regression/nan: NAN"), r.stderr


# ----------------------------------------------------------------------------- the Trainer
def test_trainer_report_to_mlflow(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    import torch
    from transformers import Trainer, TrainingArguments

    from _hf_digits import Clf, Rows, Tokens, digits, tiny_bert

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "hf")
    mlflow.set_tracking_uri(uri)  # the Trainer keeps a URI set earlier in the process (Lightning's test)
    torch.set_num_threads(1)
    x, y = digits()

    bert = tiny_bert()
    monkeypatch.chdir(tmp_path)  # the script's directory: mlflow.db and the output directories
    for name, model, ds, lr, save in (("digits", Clf(), Rows(x[:1024], y[:1024]), 3e-3, "no"),
                                      ("bert", bert, Tokens(), 1e-3, "steps")):
        args = TrainingArguments(output_dir=name, run_name=name, max_steps=64, learning_rate=lr, save_steps=64,
                                 per_device_train_batch_size=32, logging_steps=4, report_to="mlflow", use_cpu=True,
                                 save_strategy=save, disable_tqdm=True)
        Trainer(model=model, args=args, train_dataset=ds).train()
    # the bert run saved a checkpoint: its trainer_state.json is that run, its MLflow copy is not another
    assert [r.name for r in find_runs(tmp_path)] == ["bert/checkpoint-64/trainer_state.json", "mlflow.db/hf/digits"]
    runs = find_runs(tmp_path / "mlflow.db")  # the store alone: both
    assert [r.name for r in runs] == ["hf/digits", "hf/bert"]
    digits_run, bert_run = (read_run(r) for r in runs)
    assert digits_run.renamed["loss"] == "loss" and digits_run.has("grad_norm").sum() == 16
    assert digits_run.chance_loss is None  # a plain torch module has no configuration to read
    assert bert_run.chance_loss == pytest.approx(math.log(3))  # from the logged model configuration
    assert diagnose(digits_run).verdict == "healthy"


# ----------------------------------------------------------------------------- a tracking server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    exe = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    if not Path(exe).exists():
        if os.environ.get("LRKIT_REQUIRE_EXTRAS") == "1":
            pytest.fail("no mlflow command, and CI requires the dev extra (mlflow) to be installed")
        pytest.skip("no mlflow command (the server comes with the full mlflow package: pip install mlflow)")
    d = tmp_path_factory.mktemp("server")
    port = _free_port()
    proc = subprocess.Popen([exe, "server", "--backend-store-uri", f"sqlite:///{d / 'server.db'}", "--host",
                             "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=open(d / "server.log", "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.skip(f"the MLflow server did not start: {(d / 'server.log').read_text()[-500:]}")
                time.sleep(0.5)
        yield url, log_runs(url)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_runs_on_a_tracking_server(server):
    url, ids = server
    verdicts = {n: v.verdict for n, v in diagnose_runs(url).items()}
    assert verdicts["digits/good"] == "healthy" and verdicts["digits/broken"] == "nan" and len(verdicts) == 4
    r = lrkit("diagnose", url, "--run", "digits/broken", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["verdict"] == "nan", r.stderr


def test_a_server_that_does_not_answer_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP")}
    r = lrkit("diagnose", f"http://127.0.0.1:{_free_port()}", env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "MLflow could not read this store" in r.stderr


def test_a_trainer_run_with_no_training_loss_yet_is_read_from_its_eval_loss(tmp_path):
    """report_to="mlflow" under the Trainer's default logging_steps=500: a short run logs eval_loss
    once per epoch and no training loss; it is read, and an eval_loss 5x its chance level speaks."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    rid = client.create_run(client.create_experiment("e"), run_name="bert").info.run_id
    client.log_param(rid, "architectures", "['BertForSequenceClassification']")
    client.log_param(rid, "id2label", "{0: 'LABEL_0', 1: 'LABEL_1'}")
    for epoch, value in enumerate([3.54, 0.77, 1.10]):
        client.log_metric(rid, "eval_loss", value, step=64 * (epoch + 1))
    recs = read_log(tmp_path / "mlflow.db")
    assert recs.has("loss").sum() == 0 and recs.chance_loss == pytest.approx(math.log(2))
    d = diagnose(recs)
    assert d.verdict == "diverging" and "chance level" in d.message, d.message
    other = f"sqlite:///{tmp_path / 'other.db'}"  # without eval_loss: a loss under another name, refused
    client = mlflow.MlflowClient(other)
    rid = client.create_run(client.create_experiment("e"), run_name="r").info.run_id
    client.log_metric(rid, "my_loss", 1.0, step=0)
    with pytest.raises(LogFormatError, match="no loss column"):
        read_log(tmp_path / "other.db")


def test_a_run_resumed_from_an_earlier_checkpoint_drops_what_it_logged_past_it(tmp_path):
    # logged steps 0-59, killed, resumed from its checkpoint of step 40 and killed again at 50: the
    # first attempt's 51-59 are not the run's history any more
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    rid = client.create_run(client.create_experiment("e"), run_name="r").info.run_id
    for t in range(60):
        client.log_metric(rid, "loss", decaying(t), timestamp=1000 + t, step=t)
    for t in range(40, 51):
        client.log_metric(rid, "loss", 0.5 * decaying(t), timestamp=5000 + t, step=t)
    recs = read_log(tmp_path / "mlflow.db")
    assert recs.step.tolist() == list(range(51))
    assert recs.loss[39] == pytest.approx(decaying(39)) and recs.loss[45] == pytest.approx(0.5 * decaying(45))


def test_the_store_modules_examples():
    import doctest

    from lrkit.doctor import mlflow_store

    assert doctest.testmod(mlflow_store).failed == 0
