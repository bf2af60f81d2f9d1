"""An optimizer that ignores the LR of its param groups -- Hugging Face's
``Adafactor(relative_step=True)``, the T5 recipe -- is refused with the reason by everything that sets
the LR (the finder, the autopilot, the guards), and watched without a crash by the doctors."""
from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers.optimization import Adafactor, AdafactorSchedule  # noqa: E402

import lrkit.torch as lt  # noqa: E402
from lrkit.autopilot import AutopilotError  # noqa: E402
from lrkit.scaling import lr_ignored  # noqa: E402
from _hf_digits import Clf, Rows, digits  # noqa: E402

pytestmark = [pytest.mark.torch]


def _relative(model):
    # the recipe of the transformers docs for T5: the step size comes from the step count
    return Adafactor(model.parameters(), scale_parameter=True, relative_step=True, warmup_init=True, lr=None)


def _loader(n=320):
    x, y = digits()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:n], y[:n]), batch_size=32)


def test_the_reason_names_the_option_and_the_fix():
    net = torch.nn.Linear(64, 10)
    reason = lr_ignored(_relative(net))
    assert "Adafactor(relative_step=True)" in reason and "relative_step=False" in reason
    assert lr_ignored(Adafactor(net.parameters(), lr=1e-3, relative_step=False, scale_parameter=False)) is None
    assert lr_ignored(torch.optim.Adafactor(net.parameters())) is None  # torch's scales its updates by the LR
    assert lr_ignored(torch.optim.AdamW(net.parameters())) is None


def test_the_finder_and_the_autopilot_refuse_it_and_leave_the_model_alone():
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    before = [p.detach().clone() for p in model.parameters()]
    opt = _relative(model)
    with pytest.raises(ValueError, match=r"optimizer: Adafactor\(relative_step=True\) computes its own step size"):
        lt.find_lr(model, opt, torch.nn.functional.cross_entropy, _loader(), train_steps=100, progress=False)
    with pytest.raises(AutopilotError, match=r"Adafactor\(relative_step=True\)"):
        lt.autopilot(model, opt, torch.nn.functional.cross_entropy, _loader(), train_steps=100)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_the_torch_doctor_watches_it_with_an_unknown_lr_and_its_guard_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = _relative(model)
    with pytest.raises(ValueError, match=r"TorchDoctor: the guard lowers the LR after a rollback, and Adafactor"):
        lt.TorchDoctor(model, opt, guard=True)
    watch = lt.TorchDoctor(model, opt, guard=False)
    for step, (x, y) in enumerate(_loader()):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        watch.after_backward(loss)
        opt.step()
        watch.after_step(step, loss)
    assert watch.doctor.n_observations == 10  # every step watched, with no LR to read


def _hf_train(callback, steps=30):
    x, y = digits()
    model = Clf()
    opt = _relative(model)
    args = transformers.TrainingArguments(output_dir="/tmp/unused", max_steps=steps, per_device_train_batch_size=32,
                                          logging_steps=5, report_to=[], save_strategy="no", disable_tqdm=True,
                                          use_cpu=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Rows(x[:640], y[:640]),
                                   optimizers=(opt, AdafactorSchedule(opt)), callbacks=[callback])
    before = [p.detach().clone() for p in model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    return model, before


def test_the_trainer_recipe_is_watched_and_its_guard_refused_before_any_step(tmp_path, monkeypatch):
    from lrkit.integrations.transformers.autopilot import AutopilotCallback
    from lrkit.integrations.transformers.callback import LRDoctorCallback

    monkeypatch.chdir(tmp_path)
    watch = LRDoctorCallback(guard=False)
    _hf_train(watch)
    assert watch.doctor.n_observations >= 6  # every log of the 30 steps (one each 5) was read
    for cb, error, where in ((LRDoctorCallback(guard=True), ValueError, "LRDoctorCallback: the guard lowers"),
                             (AutopilotCallback(), AutopilotError, "AutopilotCallback: Adafactor")):
        with pytest.raises(error, match=where):
            _hf_train(cb)


def test_lightning_watches_it_and_refuses_its_guard():
    pl = pytest.importorskip("lightning.pytorch")
    from lrkit.lightning import LRDoctorCallback

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return _relative(self)

    def fit(cb):
        trainer = pl.Trainer(max_steps=20, accelerator="cpu", logger=False, enable_progress_bar=False,
                             enable_checkpointing=False, enable_model_summary=False, callbacks=[cb])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(Net(), _loader())
        return trainer

    watch = LRDoctorCallback(guard=False)
    assert fit(watch).global_step == 20 and watch.doctor.n_observations == 20
    with pytest.raises(ValueError, match=r"LRDoctorCallback: the guard lowers the LR after a rollback, and Adafactor"):
        fit(LRDoctorCallback(guard=True))
