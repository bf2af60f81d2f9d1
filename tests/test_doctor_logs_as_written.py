"""Issue 7, item 4: logs as frameworks write them (the real-runs corpus and real writers)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lrkit.doctor import LogFormatError, diagnose, diagnose_runs, find_runs, read_log, read_runs

CORPUS = Path(__file__).resolve().parents[1] / "benchmarks" / "real_runs"


def lrkit(*args, input=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "lrkit", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, input=input)


def corpus(rel: str) -> Path:
    p = CORPUS / rel
    if not p.exists():
        pytest.skip(f"{p} is not in this checkout")
    return p


# ----------------------------------------------------------------------------- names
@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """Two SummaryWriter runs in one runs/ folder, tagged as PyTorch's TensorBoard docs do."""
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    root = tmp_path_factory.mktemp("tb") / "runs"
    for name, broken in (("exp_good", False), ("exp_nan", True)):
        w = SummaryWriter(str(root / name))
        for t in range(120):
            loss = 2.3 * 0.97**t + 0.05
            w.add_scalar("Loss/train", math.nan if broken and t >= 80 else loss, t)
            if t % 20 == 19:
                w.add_scalar("Loss/test", loss * 1.1, t)
                w.add_scalar("Accuracy/test", 0.9, t)
        w.close()
    return root


def test_loss_train_tag_is_recognised_and_runs_are_not_merged(runs_dir):
    assert [r.name for r in find_runs(runs_dir)] == ["exp_good", "exp_nan"]
    recs = read_log(runs_dir / "exp_good")
    assert recs.renamed["loss"] == "Loss/train" and recs.renamed["val_loss"] == "Loss/test"
    assert recs.renamed["val_accuracy"] == "Accuracy/test" and len(recs) == 120
    verdicts = {name: d.verdict for name, d in diagnose_runs(runs_dir).items()}
    assert verdicts == {"exp_good": "healthy", "exp_nan": "nan"}
    with pytest.raises(LogFormatError, match=r"holds 2 runs \(exp_good, exp_nan\).*read_runs"):
        read_log(runs_dir)
    assert set(read_runs(runs_dir)) == {"exp_good", "exp_nan"}


def test_cli_gives_one_named_verdict_per_run(runs_dir):
    r = lrkit("diagnose", runs_dir)
    assert r.returncode == 0, r.stderr
    assert "2 runs" in r.stdout and "exp_good: HEALTHY" in r.stdout and "exp_nan: NAN" in r.stdout
    r = lrkit("diagnose", runs_dir, "--json", "--fail-on-problem")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert [(x["run"], x["verdict"]) for x in out["runs"]] == [("exp_good", "healthy"), ("exp_nan", "nan")]


def test_cli_run_picks_one_run_of_a_directory(runs_dir, tmp_path):
    png = tmp_path / "nan.png"
    r = lrkit("diagnose", runs_dir, "--run", "exp_nan", "--plot", png)
    assert r.returncode == 0 and r.stdout.startswith(f"{runs_dir}: exp_nan: NAN"), r.stderr
    assert png.stat().st_size > 0
    r = lrkit("diagnose", runs_dir, "--plot", png)
    assert r.returncode == 2 and "pick one with --run: exp_good, exp_nan" in r.stderr


def test_columns_and_tags_can_be_named(tmp_path, runs_dir):
    p = tmp_path / "odd.csv"
    p.write_text("it,nll,eta,heldout\n" + "".join(f"{t},{2 * 0.97 ** t},0.1,{2.2 * 0.97 ** t}\n" for t in range(80)))
    recs = read_log(p, loss="nll", lr="ETA", val_loss="heldout")  # exact, then ignoring case
    assert recs.renamed == {"loss": "nll", "lr": "eta", "val_loss": "heldout", "it": "it"}
    assert diagnose(p, loss="nll").ok
    r = lrkit("diagnose", p, "--loss", "nll", "--lr", "eta", "--val-loss", "heldout", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["verdict"] == "healthy"
    # a TensorBoard tag named on the command line
    r = lrkit("diagnose", runs_dir / "exp_good", "--loss", "Loss/test", "--json")
    assert r.returncode == 0, r.stderr
    with pytest.raises(LogFormatError, match=r"no column or tag named 'loss' \(the loss you named\); found \['it', 'nll'"):
        read_log(p, loss="loss")
    with pytest.raises(LogFormatError, match=r"no column or tag named 'lr_x' \(the lr you named\)"):
        read_log(p, loss="nll", lr="lr_x")
    with pytest.raises(ValueError, match="loss must be a column or tag name"):
        read_log(p, loss="")


def test_no_recognisable_loss_lists_what_was_found_and_how_to_name_it(tmp_path, runs_dir):
    p = tmp_path / "noloss.csv"
    p.write_text("step,nll\n0,1.0\n1,0.5\n")
    r = lrkit("diagnose", p)
    assert r.returncode == 2 and r.stdout == ""
    line = r.stderr.strip()
    assert "found columns ['step', 'nll']" in line and "--loss NAME" in line and "\n" not in line
    with pytest.raises(LogFormatError, match=r"no loss tag; found tags \['Loss/train', 'Loss/test'.*--loss TAG"):
        read_log(runs_dir / "exp_good", loss=None, val_loss="Loss/train")  # the loss tag taken as val_loss


def test_a_directory_with_no_runs_says_so(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    r = lrkit("diagnose", tmp_path)
    assert r.returncode == 2 and "no runs in this directory" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(LogFormatError, match="no runs in this directory"):
        diagnose_runs(tmp_path)


# ----------------------------------------------------------------------------- run layouts
def test_hf_checkpoints_are_one_run_read_from_the_newest(tmp_path):
    src = corpus("hf/hf-a-good-s0")
    runs = find_runs(src.parent)
    named = [r.name for r in runs if r.name.startswith("hf-a-good-s0")]
    assert named == ["hf-a-good-s0/checkpoint-192/trainer_state.json"]
    recs = read_log(src)  # the output directory: its newest checkpoint
    assert recs.step.max() == 192 and recs.has("val_loss").sum() == 3


def test_lightning_versions_are_runs(tmp_path):
    src = corpus("lightning/lightning-b-good-s0/lightning_logs/version_0/metrics.csv")
    for v in (0, 1):
        d = tmp_path / "lightning_logs" / f"version_{v}"
        d.mkdir(parents=True)
        d.joinpath("metrics.csv").write_bytes(src.read_bytes())
    assert [r.name for r in find_runs(tmp_path)] == [
        "lightning_logs/version_0/metrics.csv", "lightning_logs/version_1/metrics.csv"]


# ----------------------------------------------------------------------------- the cases
def test_keras_epoch_blowup_then_chance_is_not_healthy(tmp_path):
    # the Keras CSVLogger file: loss 16 in epoch 0, then at chance with accuracy 0.19
    p = tmp_path / "training.log.csv"
    rows = ["epoch,accuracy,learning_rate,loss,val_accuracy,val_loss"]
    rows.append("0,0.15,0.3,16.02,0.19,2.31")
    for e in range(1, 12):
        rows.append(f"{e},{0.19 + 0.005 * (e % 2)},0.3,{2.31 - 0.002 * (e % 3)},0.19,{2.30 + 0.003 * (e % 2)}")
    p.write_text("\n".join(rows) + "\n")
    d = diagnose(p)
    assert d.verdict == "diverging" and d.step == 0
    assert "16.02" in d.message and d.advice[0] == "lower the LR about 10x, from 0.3 to 0.03"
    # and the same on the real Keras runs of the corpus
    for seed in (0, 1):
        assert diagnose(corpus(f"keras/keras-a-too_high-s{seed}/training.log.csv")).verdict == "diverging"


def test_hf_trainer_state_blowup_is_diverging_and_the_good_run_is_not_fluctuating():
    for seed in (0, 1):
        d = diagnose(corpus(f"hf/hf-b-too_high-s{seed}/trainer_state.json"))
        assert d.verdict == "diverging" and d.step <= 5
        assert diagnose(corpus(f"hf/hf-b-good-s{seed}/trainer_state.json")).verdict == "healthy"
        assert diagnose(corpus(f"hf/hf-a-good-s{seed}")).verdict == "healthy"  # logging_steps=10


def test_epoch_logs_are_judged_row_by_row():
    for rel in ("keras/keras-a-too_low-s0/training.log.csv", "keras/keras-b-too_low-s1/training.log.csv",
                "lightning/lightning-a-too_low-s0/lightning_logs/version_0"):
        assert diagnose(corpus(rel)).verdict == "flat", rel
    for rel in ("keras/keras-a-good-s0/training.log.csv", "keras/keras-b-good-s1/training.log.csv",
                "lightning/lightning-a-good-s1/lightning_logs/version_0"):
        assert diagnose(corpus(rel)).ok, rel


def test_messages_print_only_logged_values():
    manifest = json.loads(corpus("manifest.json").read_text())["runs"]
    for run in manifest:
        d = diagnose(CORPUS / run["log"])
        for bad in ("nanx", "infx", "(LR nan)", "LR None"):
            assert bad not in d.message, (run["name"], d.message)


def test_keras_na_cells_are_missing_values():
    recs = read_log(corpus("keras/keras-b-good-s0/training.log.csv"))
    assert not recs.has("val_accuracy").any() and recs.has("loss").all()


# ----------------------------------------------------------------------------- live and piped logs
@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_half_written_last_line_is_ignored(tmp_path, suffix):
    p = tmp_path / f"live{suffix}"
    if suffix == ".jsonl":
        text = "".join(json.dumps({"step": t, "loss": 2.0 / (t + 1)}) + "\n" for t in range(30)) + '{"step": 30, "lo'
    else:
        text = "step,loss,lr\n" + "".join(f"{t},{2.0 / (t + 1)},0.1\n" for t in range(30)) + "30,0.0"
    p.write_text(text)
    recs = read_log(p)
    assert len(recs) == 30 and recs.step[-1] == 29
    # a complete but malformed line is still an error, naming it
    p.write_text(text + "\n" + ("{}\n" if suffix == ".jsonl" else "31,0.05,0.1\n"))
    if suffix == ".jsonl":
        with pytest.raises(LogFormatError, match=r"live\.jsonl:31: malformed JSON"):
            read_log(p)


def test_standard_input_and_pipes(tmp_path):
    text = "step,loss,lr\n" + "".join(f"{t},{'nan' if t == 40 else 2.0 / (t + 1)},0.1\n" for t in range(60))
    for arg in ("-", "/dev/stdin"):
        r = lrkit("diagnose", arg, "--json", input=text)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["verdict"] == "nan" and out["step"] == 40
    jsonl = "".join(json.dumps({"step": t, "loss": 1.0 / (t + 1)}) + "\n" for t in range(60))
    r = lrkit("diagnose", "-", input=jsonl)
    assert r.returncode == 0 and "<stdin>: HEALTHY" in r.stdout


# ----------------------------------------------------------------------------- the vectorised parser
def test_fast_csv_parse_equals_the_line_by_line_one(tmp_path):
    from lrkit.doctor._tables import csv_table
    from lrkit.doctor.logs import _must_be_numeric, _records

    rng = np.random.default_rng(0)
    lines = ["epoch,step,train_loss_step,val_loss,note,lr-Adam"]
    for t in range(3000):
        lines.append(f"{t // 100},{t},{rng.random():.6g},,x{t},{0.1 if t % 7 else ''}")
        if t % 100 == 99:
            lines.append(f"{t // 100},{t},,{rng.random():.6g},NA,")
    text = "\n".join(lines) + "\n"
    keep = _must_be_numeric({})
    fast = _records(csv_table(text, "f.csv", keep=keep), {})
    slow = _records(csv_table(text, "f.csv", keep=keep, fast=False), {})
    assert fast.names == slow.names == ["step", "epoch", "loss", "val_loss", "lr"]
    for n in fast.names:
        np.testing.assert_array_equal(fast[n], slow[n])
        np.testing.assert_array_equal(fast.has(n), slow.has(n))
    # an error found after the fast parse still names its line
    bad = tmp_path / "dup.csv"
    bad.write_text("step,loss\n" + "".join(f"{t},1.0\n" for t in range(500)) + "499,0.5\n")
    with pytest.raises(LogFormatError, match=r"dup\.csv:502: step 499 appears again with a different 'loss' value"):
        read_log(bad)
    # a step going back with another value is a run resumed from an earlier checkpoint: read as it went on
    resumed = tmp_path / "resumed.csv"
    resumed.write_text("step,loss\n" + "".join(f"{t},1.0\n" for t in range(500)) + "7,0.5\n")
    assert read_log(resumed).step.tolist() == list(range(8)) and read_log(resumed).loss[7] == 0.5


# ----------------------------------------------------------------------------- a thrashing run read flat
def _lightning_csv(path, train, val):
    """A metrics.csv as Lightning's CSVLogger writes it with log_every_n_steps=50 and a validation per
    44-step epoch (training rows at steps 49, 99, ...; validation rows at 43, 87, ...)."""
    rows = ["epoch,step,train_loss,val_loss"]
    for e, v in enumerate(val):
        rows.append(f"{e},{44 * e + 43},,{v}")
        if e < len(train):
            rows.append(f"{e + 1},{50 * e + 49},{train[e]},")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_flat_loss_whose_validation_loss_swings_is_too_high_not_too_low(tmp_path):
    """Lightning, default logging: a run blown up before its first row then thrashing around chance
    (Adam at LR 3 on digits: training losses 2.3-2.9, validation losses jumping 7% between epochs)
    was read flat and advised to raise the LR 10x. An LR too low cannot move the weights that much:
    its validation losses fall in a straight line. Both have the same training losses here."""
    train = [2.93, 2.40, 2.68, 2.28, 2.62, 2.34, 2.82]
    thrash = diagnose(_lightning_csv(tmp_path / "a.csv", train, [2.82, 2.47, 2.53, 2.49, 2.80, 2.52, 2.54, 2.51]))
    assert thrash.verdict == "diverging" and thrash.evidence["val_swing"] > 0.05
    assert thrash.advice[0].startswith("lower the LR") and "validation loss jumps by" in thrash.message
    slow = diagnose(_lightning_csv(tmp_path / "b.csv", train, [2.3073 - 0.001 * e for e in range(8)]))
    assert slow.verdict == "flat" and slow.advice[1].startswith("raise the LR")
    assert "val_swing" not in slow.evidence
    # the log starts at step 49: an LR that stopped the network before it reads flat too -- the range
    # test first, and the message counts logged losses, not steps
    assert slow.advice[0].startswith("run an LR range test")
    assert "7 logged losses (steps 49-349)" in slow.message and "The log starts at step 49" in slow.message


def test_a_real_lightning_run_at_an_absurd_lr_is_not_advised_a_higher_one(tmp_path):
    """The same through a real Lightning fit with its default logging (CSVLogger, every 50 steps)."""
    pl = pytest.importorskip("lightning.pytorch")
    torch = pytest.importorskip("torch")
    from lightning.pytorch.loggers import CSVLogger
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target)

    class Digits(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))

        def training_step(self, b, i):
            loss = torch.nn.functional.cross_entropy(self.net(b[0]), b[1])
            self.log("train_loss", loss)
            return loss

        def validation_step(self, b, i):
            self.log("val_loss", torch.nn.functional.cross_entropy(self.net(b[0]), b[1]))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=3.0)

    pl.seed_everything(0, verbose=False)
    load = torch.utils.data.DataLoader
    trainer = pl.Trainer(max_epochs=8, logger=CSVLogger(tmp_path, name="digits"), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(Digits(), load(torch.utils.data.TensorDataset(x[:1400], y[:1400]), batch_size=32, shuffle=True),
                load(torch.utils.data.TensorDataset(x[1400:], y[1400:]), batch_size=512))
    d = diagnose(tmp_path / "digits" / "version_0" / "metrics.csv")
    assert d.verdict in ("diverging", "fluctuating") and d.advice[0].startswith("lower the LR"), d.message


def test_a_trainers_tensorboard_copy_of_its_run_is_not_a_second_run(tmp_path):
    """Trainer(report_to="tensorboard", save_steps=...) writes the run twice into its output directory:
    TensorBoard events under runs/ and trainer_state.json in each checkpoint. One run, not two; a
    TensorBoard run elsewhere in the folder still is one of its own."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tensorboard")
    from _hf_digits import Clf, Rows, digits

    x, y = digits()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=40, per_device_train_batch_size=32, logging_steps=5,
        save_strategy="steps", save_steps=20, report_to=["tensorboard"], disable_tqdm=True, use_cpu=True)
    transformers.Trainer(model=Clf(), args=args, train_dataset=Rows(x[:640], y[:640])).train()
    assert list((tmp_path / "hf" / "runs").rglob("*tfevents*"))  # the Trainer wrote both
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "other")) as w:  # a run of its own
        for step in range(30):
            w.add_scalar("Loss/train", 2.0 * 0.95 ** step, step)
    assert [r.name for r in find_runs(tmp_path)] == ["hf/checkpoint-40/trainer_state.json", "other"]


def test_a_trainer_run_with_default_logging_says_to_log_more_often(tmp_path):
    """The Trainer's default logging_steps=500 leaves a short run's trainer_state.json one training loss
    (its final average): too few to judge, and the verdict says how to log more."""
    pytest.importorskip("transformers")
    import torch
    from transformers import Trainer, TrainingArguments

    from _hf_digits import Clf, Rows, digits

    torch.set_num_threads(1)
    x, y = digits()
    args = TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=32,
                             eval_strategy="epoch", report_to="none", use_cpu=True, save_strategy="no",
                             disable_tqdm=True)
    trainer = Trainer(model=Clf(), args=args, train_dataset=Rows(x[:1024], y[:1024]),
                      eval_dataset=Rows(x[1024:], y[1024:]))
    trainer.train()
    trainer.save_state()
    recs = read_log(tmp_path / "out")
    assert recs.has("loss").sum() == 1 and recs.has("val_loss").sum() == 2
    d = diagnose(recs)
    assert d.verdict == "healthy" and "too few to judge" in d.message
    assert d.advice[0].startswith("log the training loss more often: this log holds 1") and "logging_steps" in d.advice[0]
    r = lrkit("diagnose", tmp_path / "out")
    assert r.returncode == 0 and "- log the training loss more often" in r.stdout, r.stderr


def test_a_checkpoint_folder_given_directly_is_read_as_its_own_run(tmp_path):
    """`lrkit diagnose out/checkpoint-128` read the state as belonging to `out` and failed with a
    ValueError traceback (the run's name was taken relative to the folder given)."""
    for step in (64, 128):
        ck = tmp_path / "out" / f"checkpoint-{step}"
        ck.mkdir(parents=True)
        history = [{"loss": 2.0 * 0.97 ** s, "step": s} for s in range(10, step + 1, 10)]
        (ck / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
    ck = tmp_path / "out" / "checkpoint-64"
    assert [(r.name, r.path) for r in find_runs(ck)] == [("trainer_state.json", ck / "trainer_state.json")]
    assert [r.name for r in find_runs(tmp_path / "out")] == ["checkpoint-128/trainer_state.json"]
    d = diagnose(ck)
    assert d.ok and d.message.endswith("after 6 observations")


# Keras CSVLogger rows (epoch, loss, val_loss) of two real runs of a small MLP on scikit-learn's diabetes
# (standardised targets, batch 16, 15 epochs): both learn in their first epochs, then sit at the task's
# floor with the validation loss swinging 3-7% and no new best
NOISE_FLOOR_RUNS = {
    "adam_0.03": [(0.6166, 0.5013), (0.5255, 0.4839), (0.4774, 0.519), (0.4866, 0.4846), (0.4761, 0.5288), (0.4738, 0.5064), (0.4796, 0.5593), (0.4687, 0.5058), (0.4822, 0.4931), (0.5312, 0.4996), (0.4581, 0.5558), (0.4577, 0.5808), (0.4596, 0.5673), (0.4223, 0.5477), (0.4173, 0.5885)],
    "sgd_momentum_0.03": [(0.6004, 0.5422), (0.5609, 0.5371), (0.4924, 0.5272), (0.4712, 0.5495), (0.4839, 0.5096), (0.4861, 0.5257), (0.5489, 0.5758), (0.489, 0.52), (0.5276, 0.5259), (0.5068, 0.5053), (0.4434, 0.5157), (0.4774, 0.6206), (0.4793, 0.5351), (0.4129, 0.5208), (0.4102, 0.5821)],
}


@pytest.mark.parametrize("name", sorted(NOISE_FLOOR_RUNS))
def test_a_run_that_learned_and_sits_at_its_floor_is_neither_flat_nor_diverging(tmp_path, name):
    # read as 'diverging' ("the loss has not decreased over 5 logged losses" -- it had fallen 23%: the
    # progress of a one-window log was taken against that window itself) and as 'flat' (raise the LR):
    # an LR too low would still bring the validation loss down in a straight line
    p = tmp_path / "training.log.csv"
    p.write_text("epoch,loss,val_loss\n" + "".join(f"{e},{a},{b}\n" for e, (a, b) in enumerate(NOISE_FLOOR_RUNS[name])))
    d = diagnose(p)
    assert d.verdict in ("healthy", "converged", "overfitting"), (d.verdict, d.message)


def test_a_short_flat_run_validated_per_epoch_whose_few_evaluations_zigzag_is_too_high(tmp_path):
    """Lightning's WandbLogger every 5 steps, four epochs of SGD-momentum at LR 40 on the digits: the
    training losses thrash between 33 and 134 from the first row, the validation losses read 58, 86,
    64, 71 -- fewer evaluations than the swing rule's five, read flat and advised to raise the LR.
    One zigzag of 10% or more from three or four evaluations is enough; a smaller one, or a straight
    line, is not (an LR too low barely moves the weights)."""
    train = [41.5, 58.3, 60.7, 71.0, 59.4, 82.2, 47.5, 85.5, 44.7, 42.2, 82.3, 85.9, 129.0, 89.6, 85.9, 92.6,
             101.1, 75.9, 73.0, 110.7, 134.1, 53.6, 68.5, 38.6, 63.7, 67.5, 53.6, 77.2, 79.4, 64.2, 32.7,
             65.2, 41.0, 56.0, 69.4]
    steps = [4 + 5 * i for i in range(len(train))]

    def log(val):
        rows = [{"step": s, "train_loss": v} for s, v in zip(steps, train)]
        rows += [{"step": s, "val_loss": v} for s, v in zip((43, 87, 131, 174), val)]
        return read_log(rows)

    thrash = diagnose(log([58.1, 86.3, 63.9, 70.6]))
    assert thrash.verdict == "diverging" and thrash.evidence["val_swing"] > 0.1, thrash.message
    assert thrash.advice[0].startswith("lower the LR")
    for val in ([58.1, 60.4, 58.9, 59.7], [58.1, 58.0, 57.9, 57.8]):  # a 2-3% zigzag; a straight line
        d = diagnose(log(val))
        assert d.verdict == "flat" and "val_swing" not in d.evidence, (val, d.message)
