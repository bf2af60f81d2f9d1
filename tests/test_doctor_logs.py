"""Log readers on files written by the real libraries, and bad input that names file and line."""
import json
import math

import numpy as np
import pytest

from lrkit.doctor import LogFormatError, diagnose, read_log


# ----------------------------------------------------------------------------- real writers
@pytest.fixture(scope="module")
def keras_run(tmp_path_factory):
    keras = pytest.importorskip("keras")
    tmp = tmp_path_factory.mktemp("keras")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 8)).astype("float32")
    y = (X @ rng.normal(size=8) > 0).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy", metrics=["accuracy"])
    path = tmp / "training.log.csv"
    hist = model.fit(X, y, epochs=12, batch_size=32, validation_split=0.25, verbose=0, callbacks=[keras.callbacks.CSVLogger(str(path))])
    return path, hist


def test_keras_csvlogger_file(keras_run):
    path, hist = keras_run
    recs = read_log(path)
    assert recs.step_column == "epoch"
    assert recs.step.tolist() == list(range(12))
    np.testing.assert_allclose(recs.loss, hist.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(recs["val_loss"], hist.history["val_loss"], rtol=1e-5)
    assert "accuracy" in recs and "val_accuracy" in recs
    if "learning_rate" in hist.history:  # Keras 3 logs the LR
        np.testing.assert_allclose(recs.lr, 0.01, rtol=1e-6)
    assert diagnose(path).verdict == "healthy"


def test_keras_history_object_and_dict(keras_run):
    _, hist = keras_run
    for obj in (hist, hist.history):
        recs = read_log(obj)
        assert len(recs) == 12
        np.testing.assert_allclose(recs.loss, hist.history["loss"])
        assert recs.step.tolist() == list(range(12))
    assert diagnose(hist).ok


def test_lightning_csvlogger_metrics_csv(tmp_path):
    torch = pytest.importorskip("torch")
    L = pytest.importorskip("lightning")
    from lightning.pytorch.loggers import CSVLogger

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, _):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x).squeeze(-1), y)
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x).squeeze(-1), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    torch.manual_seed(0)
    X = torch.randn(64, 4)
    y = X @ torch.tensor([1.0, -2.0, 0.5, 0.0])
    ds = torch.utils.data.TensorDataset(X, y)
    dl = torch.utils.data.DataLoader(ds, batch_size=8)
    trainer = L.Trainer(
        max_epochs=10,
        logger=CSVLogger(str(tmp_path)),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
        accelerator="cpu",
    )
    trainer.fit(Tiny(), dl, dl)
    path = next(tmp_path.rglob("metrics.csv"))
    header = path.read_text().splitlines()[0].split(",")
    assert {"step", "epoch", "train_loss_step", "train_loss_epoch", "val_loss"} <= set(header)
    recs = read_log(path)
    assert recs.step_column == "step"
    assert recs.renamed["loss"] == "train_loss_step"
    # every training step has its loss; validation rows were merged onto their steps
    assert recs.has("loss").sum() == 10 * 8
    assert recs.has("val_loss").sum() == 10
    assert np.all(np.diff(recs.step) > 0)
    vl = recs["val_loss"][recs.has("val_loss")]
    assert vl[-1] < vl[0]
    assert diagnose(path).verdict == "healthy"  # least squares at a stable LR: converges


def test_tensorboard_event_file_and_directory(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "run"))
    losses = [2.3 * 0.97**t + 0.05 for t in range(120)]
    for t, loss in enumerate(losses):
        w.add_scalar("train/loss", loss, t)
        w.add_scalar("lr", 0.1, t)
        if t % 20 == 19:
            w.add_scalar("val/loss", loss * 1.1, t)
    w.close()
    for target in (tmp_path / "run", next((tmp_path / "run").glob("*tfevents*")), tmp_path):
        recs = read_log(target)
        assert len(recs) == 120
        np.testing.assert_allclose(recs.loss, losses, rtol=1e-6)
        np.testing.assert_allclose(recs.lr, 0.1, rtol=1e-6)
        assert recs.has("val_loss").sum() == 6
    assert diagnose(tmp_path / "run").ok


def test_a_summarywriter_run_resumed_from_an_earlier_checkpoint_reads_as_it_went_on(tmp_path):
    """Killed after step 59, resumed in the same directory (a second event file) from its checkpoint
    of step 40 and killed again at 50: the first attempt's steps 51-59 are not the run's any more."""
    pytest.importorskip("tensorboard")
    import time

    from torch.utils.tensorboard import SummaryWriter

    for steps, loss in ((range(60), 2.0), (range(40, 51), 1.0)):
        w = SummaryWriter(str(tmp_path / "run"))
        for t in steps:
            w.add_scalar("train/loss", loss, t)
        w.close()
        time.sleep(1.1)  # event files are named by the second they were opened in
    recs = read_log(tmp_path / "run")
    assert recs.step.tolist() == list(range(51))
    assert recs.loss[:40].tolist() == [2.0] * 40 and recs.loss[40:].tolist() == [1.0] * 11


def test_a_csv_appended_by_a_resumed_run_reads_as_it_went_on(tmp_path):
    """A loop that appends to its CSV, killed after step 59 and resumed from its checkpoint of step
    40: the first attempt's rows from 40 on are dropped (it was an error: 'step 40 appears again').
    Rows that go back without disagreeing (validation rows after the training rows) merge as before."""
    rows = [f"{t},{2.0},0.1" for t in range(60)] + [f"{t},{1.0},0.1" for t in range(40, 51)]
    path = tmp_path / "log.csv"
    path.write_text("step,loss,lr\n" + "\n".join(rows) + "\n")
    recs = read_log(path)
    assert recs.step.tolist() == list(range(51))
    assert recs.loss[:40].tolist() == [2.0] * 40 and recs.loss[40:].tolist() == [1.0] * 11
    # steps that start again from the first one, with other values, are two runs in one file, not a
    # resume: said so
    twice = tmp_path / "twice.csv"
    twice.write_text("epoch,loss\n" + "".join(f"{e},{k / (e + 1)}\n" for k in (1, 2) for e in range(5)))
    with pytest.raises(LogFormatError, match=r"twice.csv:7: column 'epoch' \(the step\) starts again at 0 after 4: "
                                             r"two runs written into one file\?"):
        read_log(twice)


def test_the_resumes_modules_example():
    import doctest

    from lrkit.doctor import resumes

    assert doctest.testmod(resumes).failed == 0


def test_tensorboard_keras_style_subdirs(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    # the Keras TensorBoard callback writes train/ and validation/ with tags epoch_loss, ...
    for sub, scale in (("train", 1.0), ("validation", 1.2)):
        w = SummaryWriter(str(tmp_path / sub))
        for e in range(10):
            w.add_scalar("epoch_loss", scale / (e + 1), e)
            w.add_scalar("epoch_learning_rate", 1e-3, e)
        w.close()
    recs = read_log(tmp_path)
    np.testing.assert_allclose(recs.loss, [1 / (e + 1) for e in range(10)], rtol=1e-6)
    np.testing.assert_allclose(recs["val_loss"], [1.2 / (e + 1) for e in range(10)], rtol=1e-6)
    np.testing.assert_allclose(recs.lr, 1e-3, rtol=1e-6)


def test_a_summarywriter_log_with_keras_like_names_keeps_its_one_clock(tmp_path):
    """Keras' two clocks (epoch_* at the epoch index, batch_* at the step) are read from the TF2
    tensors Keras writes; a SummaryWriter's scalars named alike are all on the global step."""
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "run"))
    for t in range(60):
        w.add_scalar("batch_loss", 2.0 / (t + 1), t)
        if t % 10 == 9:
            w.add_scalar("epoch_loss", 2.0 / (t + 1), t)
            w.add_scalar("evaluation_loss_vs_iterations", 2.2 / (t + 1), t)
    w.close()
    recs = read_log(tmp_path / "run")
    # batch_loss kept as written (not taken for the loss), epoch_loss kept (the loss, every 10 steps),
    # evaluation_..._vs_iterations not renamed to a validation loss
    assert len(recs) == 60 and "batch_loss" in recs.names and recs.has("loss").sum() == 6
    assert "evaluation_loss_vs_iterations" in recs.names and "val_loss" not in recs.names


def test_jsonl_hf_trainer_state_and_in_memory(tmp_path):
    rows = [{"step": t, "loss": 1.0 / (t + 1), "learning_rate": 0.01, "grad_norm": 1.0} for t in range(50)]
    rows[30]["loss"] = float("nan")
    p = tmp_path / "log.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")  # NaN is valid in Python's JSON
    recs = read_log(p)
    assert math.isnan(recs.loss[30]) and recs.has("loss")[30]
    d = diagnose(p)
    assert d.verdict == "nan" and d.step == 30
    state = {"log_history": [{"step": t, "epoch": t / 10, "loss": 1.0 / (t + 1), "learning_rate": 5e-5} for t in range(1, 40)]
             + [{"step": 39, "epoch": 3.9, "eval_loss": 0.3}]}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    recs = read_log(tmp_path / "trainer_state.json")
    assert recs.step_column == "step" and len(recs) == 39
    assert recs.has("val_loss").sum() == 1 and recs.lr[0] == 5e-5
    assert read_log({"iteration": [1, 2], "train/loss": [2.0, 1.0], "lr-Adam": [0.1, 0.1]}).names == ["step", "loss", "lr"]
    assert read_log([{"loss": 3.0}, {"loss": 2.0}]).step_column == "row"


def test_lightning_style_rows_are_merged(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text(
        "epoch,step,train_loss_step,val_loss,train_loss_epoch\n"
        "0,0,2.0,,\n0,1,1.5,,\n0,1,,1.7,1.75\n1,2,1.2,,\n1,3,1.0,,\n1,3,,1.1,1.1\n"
    )
    recs = read_log(p)
    assert recs.step.tolist() == [0, 1, 2, 3]
    assert recs.loss.tolist() == [2.0, 1.5, 1.2, 1.0]
    assert recs.has("val_loss").tolist() == [False, True, False, True]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "name, text, pattern",
    [
        ("empty.csv", "", r"empty\.csv:1: the file is empty"),
        ("header.csv", "step,loss\n", r"header\.csv:2: no data rows"),
        ("noloss.csv", "step,acc\n0,0.5\n", r"noloss\.csv:1: no loss column; found columns \['step', 'acc'\]"),
        ("tabs.tsv", "step\tacc\n0\t0.5\n", r"tabs\.tsv:1: no loss column; found columns \['step', 'acc'\]"),
        ("abc.csv", "step,loss,lr\n0,2.3,0.1\n1,abc,0.1\n", r"abc\.csv:3: column 'loss' is not a number: 'abc'"),
        ("badstep.csv", "step,loss\n0,1.0\n1.5,0.9\n", r"badstep\.csv:3: column 'step' \(the step\) must be a whole number"),
        ("dup.csv", "step,loss\n0,1.0\n0,0.9\n", r"dup\.csv:3: step 0 appears again with a different 'loss'"),
        ("cells.csv", "step,loss\n0,1.0,7\n", r"cells\.csv:2: 3 cells but the header has 2 columns"),
        ("bad.jsonl", '{"step": 0, "loss": 1.0}\n{"step": 1, "loss": \n', r"bad\.jsonl:2: malformed JSON"),
        ("list.jsonl", '{"step": 0, "loss": 1.0}\n[1, 2]\n', r"list\.jsonl:2: expected a JSON object per line"),
        ("empty.jsonl", "\n\n", r"empty\.jsonl:1: the file is empty"),
        ("notes.txt", "just some words\nno commas here\n", r"notes\.txt: unknown log format"),
    ],
)
def test_bad_files_name_the_file_and_line(tmp_path, name, text, pattern):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(LogFormatError, match=pattern) as exc:
        read_log(p)
    assert isinstance(exc.value, ValueError)


def test_text_that_is_not_utf8_names_the_file_and_line(tmp_path):
    p = tmp_path / "latin1.csv"
    p.write_bytes("step,loss,note\n0,1.0,ok\n1,0.9,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(LogFormatError, match=r"latin1\.csv:3: not UTF-8 text \(byte 0xe9"):
        read_log(p)
    q = tmp_path / "utf16.jsonl"
    q.write_bytes(b"\xff\xfe\x00")  # a UTF-16 byte-order mark, then half a character
    with pytest.raises(LogFormatError, match=r"utf16\.jsonl:1: .*UTF-16"):
        read_log(q)


@pytest.mark.parametrize("suffix, sep", [(".tsv", "\t"), (".csv", "\t"), (".csv", ";"), (".log", "\t")])
def test_tab_and_semicolon_separated_logs(tmp_path, suffix, sep):
    rows = [sep.join(["step", "loss", "lr"])] + [sep.join([str(t), str(2.0 / (t + 1)), "0.1"]) for t in range(20)]
    p = tmp_path / f"run{suffix}"
    p.write_text("\n".join(rows) + "\n")
    recs = read_log(p)
    assert recs.step.tolist() == list(range(20))
    np.testing.assert_allclose(recs.loss, [2.0 / (t + 1) for t in range(20)])
    np.testing.assert_allclose(recs.lr, 0.1)


def test_utf16_logs_from_windows_tools_are_read(tmp_path):
    p = tmp_path / "win.csv"
    p.write_bytes("step,loss\r\n0,2.0\r\n1,1.5\r\n".encode("utf-16"))
    assert read_log(p).loss.tolist() == [2.0, 1.5]


def test_missing_file_and_bad_objects(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_log(tmp_path / "nope.csv")
    with pytest.raises(LogFormatError, match="no runs in this directory"):
        read_log(tmp_path)
    with pytest.raises(LogFormatError, match="columns have different lengths"):
        read_log({"loss": [1.0, 2.0], "lr": [0.1]})
    with pytest.raises(LogFormatError, match=r"<memory>\[1\]: expected a dict per row"):
        read_log([{"loss": 1.0}, 3])
    with pytest.raises(LogFormatError, match="cannot read a log from int"):
        read_log(42)
    with pytest.raises(LogFormatError, match=r"<memory>\[0\]: column 'loss' is not a number: True"):
        read_log([{"loss": True}])
