"""fp16 mixed precision: a loss scaler's overflow steps are its normal work, not a NaN of the run.

Each healthy run here starts its ``GradScaler`` at 2**40, so that its first ~20 steps overflow
float16 and are skipped while the scale comes down (what the default 2**16 does on the first steps
of a large model, and once every 2000 steps on any). The doctor's ``nan`` verdict used to read the
``inf``/``nan`` gradient norm of those steps: the torch autopilot gave up on such a run at step 3,
and every guard (plain loop, Lightning, the Hugging Face Trainer) rolled it back. A run whose
gradients stay non-finite until the scale falls below 1 is still reported.
"""
from __future__ import annotations

import doctest
import warnings

import pytest

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import lrkit.integrations.torch.amp as amp  # noqa: E402
from _hf_digits import digits  # noqa: E402
import lrkit.torch as lt  # noqa: E402
from lrkit.doctor import diagnose  # noqa: E402
from _torch_digits import cycled, one_thread  # noqa: E402,F401 - one_thread: autouse, one torch thread per test

INIT_SCALE = 2.0**40




def test_docstring_examples():
    assert doctest.testmod(amp, optionflags=doctest.ELLIPSIS).failed == 0


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def _val_loss(net, x, y):
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(net(x), y))


def _overflowed(scaler):
    """Halvings of the scale since INIT_SCALE: the steps the scaler skipped, less the growths (none
    in these runs, shorter than its growth interval)."""
    return round(torch.log2(torch.tensor(INIT_SCALE / scaler.get_scale())).item())


def _fp16_loop(model, opt, scaler, loader, steps, after_backward, after_step, nan_grads=False):
    """The loop of torch's AMP recipe, on the CPU's float16 autocast."""
    for step, x, y in cycled(loader, steps):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        if nan_grads:  # adds 0 to the loss, NaN to every gradient of the first layer
            w = model[0].weight
            loss = loss + (w - w.detach()).abs().sqrt().sum()
        scaler.scale(loss).backward()
        after_backward(loss)
        scaler.step(opt)
        scaler.update()
        if after_step(step, loss):
            return step
    return None


def test_torch_autopilot_trains_through_the_scalers_overflow_steps():
    x, y = digits()
    loader = DataLoader(TensorDataset(x[:640], y[:640]), batch_size=32, shuffle=True)
    model = _net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    pilot = lt.autopilot(model, opt, torch.nn.functional.cross_entropy, loader, train_steps=200, scaler=scaler,
                         restart_on_overfit=False)
    _fp16_loop(model, opt, scaler, loader, 200, lambda loss: None, lambda step, loss: pilot.after_step(loss))
    assert _overflowed(scaler) >= 10  # the first steps overflowed and were skipped
    assert pilot.events == [] and pilot.pilot.interventions == []
    assert _val_loss(model, x[1400:], y[1400:]) < 0.6


def test_torch_doctor_guard_leaves_the_overflow_steps_to_the_scaler():
    x, y = digits()
    loader = DataLoader(TensorDataset(x[:640], y[:640]), batch_size=32, shuffle=True)
    model = _net()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    watch = lt.TorchDoctor(model, opt, guard=True, scaler=scaler, snapshot_every=20)
    _fp16_loop(model, opt, scaler, loader, 150, watch.after_backward,
               lambda step, loss: watch.after_step(step, loss))
    assert _overflowed(scaler) >= 10
    assert watch.interventions == [] and watch.diagnosis.verdict != "nan"
    assert _val_loss(model, x[1400:], y[1400:]) < 0.6


def test_gradients_non_finite_at_every_step_are_reported_once_the_scale_is_below_one():
    x, y = digits()
    loader = DataLoader(TensorDataset(x[:640], y[:640]), batch_size=32)
    model = _net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    watch = lt.TorchDoctor(model, opt, guard=False, scaler=scaler)
    seen = []
    _fp16_loop(model, opt, scaler, loader, 40, watch.after_backward,
               lambda step, loss: seen.append(watch.after_step(step, loss)) or watch.diagnosis.verdict == "nan",
               nan_grads=True)
    d = watch.diagnosis
    assert d.verdict == "nan" and "gradient norm is nan" in d.message
    # 2**16 halved at each skipped step: below 1 after the 17th (step 16), not before
    assert d.step == 16 and len(seen) == 17 and scaler.get_scale() < amp.MIN_LOSS_SCALE


def test_the_finders_candidates_start_where_the_scaler_settled_and_the_scaler_comes_back_as_it_was():
    # from 2**40 the scaler skips its first ~20 steps: each 20-step candidate, started from the
    # user's scaler, trained nothing and was rejected (the answer fell back to the rule of thumb)
    x, y = digits()
    loader = DataLoader(TensorDataset(x[:1400], y[:1400]), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(x[1400:], y[1400:]), batch_size=256)

    def fp16_loss(model, batch):
        with torch.autocast("cpu", dtype=torch.float16):
            return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])

    model = _net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    before = scaler.state_dict()
    result = lt.find_lr(model, opt, None, train_loader=loader, val_loader=val, step_fn=fp16_loss, scaler=scaler,
                        train_steps=600, progress=False)
    assert result.method == "verified"
    scored = [c for c in result.details["candidates"] if c["score"] is not None]
    assert len(scored) >= 3 and all(c["steps"] == result.details["verify_steps"] for c in scored)
    assert 1e-3 < result.suggestion < 0.1
    assert scaler.state_dict() == before and scaler._scale is None  # as it came: not used yet, its scale 2**40


def test_a_log_whose_gradient_norm_stays_non_finite_is_still_nan():
    # without a scaler a non-finite gradient is applied: the weights and every later norm are NaN,
    # while the Trainer's logging_nan_inf_filter keeps the logged loss finite
    rows = [{"step": s, "loss": 2.3 * 0.99 ** min(s, 100), "grad_norm": 0.5 if s < 100 else float("nan"),
             "learning_rate": 1e-3} for s in range(1, 400)]
    d = diagnose(rows)
    assert d.verdict == "nan" and d.step == 100
    rows[50]["grad_norm"] = rows[51]["grad_norm"] = float("inf")  # skipped by a scaler: finite norms follow
    assert diagnose(rows).step == 100


# ------------------------------------------------------------------ Lightning
def _lightning_fp16():
    """Lightning's own fp16 AMP plugin with a real GradScaler on the CPU (Lightning would switch a
    "16-mixed" string to bf16 there)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=INIT_SCALE))


def _lightning_module(lr):
    pl = pytest.importorskip("lightning.pytorch")

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def training_step(self, batch, batch_idx):
            xb, yb = batch
            return torch.nn.functional.cross_entropy(self.net(xb), yb)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=lr)

    return pl, Net()


def _lightning_fit(pl, module, callback, steps):
    x, y = digits()
    plugin = _lightning_fp16()
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, enable_progress_bar=False, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[callback], plugins=[plugin])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, DataLoader(TensorDataset(x[:640], y[:640]), batch_size=32, shuffle=True))
    assert trainer.precision_plugin.scaler is plugin.scaler
    return plugin.scaler, _val_loss(module.net, x[1400:], y[1400:])


def test_lightning_guard_leaves_the_overflow_steps_to_the_scaler():
    from lrkit.lightning import LRDoctorCallback

    pl, module = _lightning_module(3e-3)
    cb = LRDoctorCallback(guard=True, snapshot_every=20)
    scaler, val = _lightning_fit(pl, module, cb, 150)
    assert _overflowed(scaler) >= 10
    assert cb.interventions == [] and cb.diagnosis.verdict != "nan"
    assert val < 0.6


def test_lightning_autopilot_trains_through_the_overflow_steps():
    from lrkit.lightning import AutopilotCallback

    pl, module = _lightning_module(1.0)  # the LR is the autopilot's
    cb = AutopilotCallback(restart_on_overfit=False)
    scaler, val = _lightning_fit(pl, module, cb, 200)
    assert _overflowed(scaler) >= 10
    assert cb.pilot.interventions == []
    assert val < 0.6


# ------------------------------------------------------------------ the Hugging Face Trainer
def _hf_fit(tmp_path, callback, steps, lr):
    """``Trainer(fp16=True)`` as it runs on a GPU: Accelerate's GradScaler and float16 autocast.
    Accelerate gives the CPU neither (its fp16 there is no scaler and no autocast), so both are switched on
    after the Trainer is built; the Trainer, Accelerate's optimizer wrapper and the scaler then run
    their own fp16 code unchanged."""
    transformers = pytest.importorskip("transformers")
    from _hf_digits import Clf, Rows

    x, y = digits()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=32, logging_steps=1,
        learning_rate=lr, fp16=True, save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, seed=0)
    model = Clf()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Rows(x[:640], y[:640]), callbacks=[callback])
    assert trainer.accelerator.mixed_precision == "fp16"
    trainer.accelerator.scaler = scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    trainer.accelerator.native_amp = True
    trainer.train()
    logged = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    assert not all(map(lambda g: g == g and g < float("inf"), logged))  # the Trainer logged the overflows
    # the log as `lrkit diagnose` reads it afterwards: the overflow rows are no NaN of the run
    assert diagnose(trainer.state.log_history).verdict != "nan"
    return scaler, _val_loss(model.net, x[1400:], y[1400:])


def test_hugging_face_guard_leaves_the_overflow_steps_to_the_scaler(tmp_path):
    from lrkit.transformers import LRDoctorCallback

    cb = LRDoctorCallback(guard=True, snapshot_every=20)
    scaler, val = _hf_fit(tmp_path, cb, 150, 1e-2)
    assert _overflowed(scaler) >= 10
    assert cb.interventions == [] and cb.diagnosis.verdict != "nan"
    assert val < 0.6


def test_hugging_face_autopilot_trains_through_the_overflow_steps(tmp_path):
    from lrkit.transformers import AutopilotCallback

    cb = AutopilotCallback(restart_on_overfit=False)
    scaler, val = _hf_fit(tmp_path, cb, 200, 5e-5)
    assert _overflowed(scaler) >= 10
    assert cb.pilot.interventions == []
    assert val < 0.6
