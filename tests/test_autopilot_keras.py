"""lrkit.keras.AutopilotCallback: model.fit with no LR chosen, refusals, resume from state_path."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import lrkit.integrations.keras.trainer as keras_trainer  # noqa: E402
from lrkit.autopilot import AutopilotError  # noqa: E402
from lrkit.keras import AutopilotCallback  # noqa: E402
from _overfit import check_planned_and_restarted  # noqa: E402
from _wine import unscaled_wine  # noqa: E402


class LRTrace(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.lrs = []

    def on_train_batch_begin(self, batch, logs=None):
        self.lrs.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


def _data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16.0).astype("float32"), d.target.astype("int64")
    return x[:640], y[:640], x[1400:], y[1400:]


def _model(optimizer=None):
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    m.compile(optimizer=optimizer or keras.optimizers.Adam(learning_rate=7.0),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m


def test_fit_with_no_lr_chosen_follows_the_plan():
    x, y, xv, yv = _data()
    model, trace = _model(), LRTrace()
    cb = AutopilotCallback(x, y, batch_size=32, val_data=(xv, yv), restart_on_overfit=False)
    model.fit(x, y, batch_size=32, epochs=6, validation_data=(xv, yv), callbacks=[cb, trace], verbose=0)
    assert cb.pilot.restart_on_overfit is False  # passed through (the default is covered by the other tests)
    assert cb.plan.train_steps == 120 and cb.plan.family == "adam"
    assert [e for e in cb.events if e.kind == "rollback"] == []
    plateau = [e.step for e in cb.events if e.kind == "plateau"]
    until = plateau[0] + 1 if plateau else 120
    np.testing.assert_allclose(trace.lrs[:until], cb.plan.schedule(np.arange(until)), rtol=1e-5)
    assert max(trace.lrs) == pytest.approx(cb.plan.peak_lr, rel=1e-5)
    assert model.evaluate(xv, yv, verbose=0) < 1.0



class _Halves(keras.callbacks.Callback):
    """Sets the LR to half the autopilot's at the end of the second epoch (as ReduceLROnPlateau does)."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            opt = self.model.optimizer
            opt.learning_rate = float(keras.ops.convert_to_numpy(opt.learning_rate)) / 2


def test_another_callback_setting_the_lr_is_said_once_and_overridden(caplog):
    """The autopilot assigns the LR before every batch: a callback that also sets it is overridden,
    and the log says so once, naming the step and both LRs; a run with none says nothing."""
    x, y, xv, yv = _data()
    quiet = AutopilotCallback(x, y, batch_size=32, restart_on_overfit=False, plateau=False)
    with caplog.at_level("WARNING", logger="lrkit.autopilot"):
        _model().fit(x, y, batch_size=32, epochs=3, callbacks=[quiet], verbose=0)
    assert not [r for r in caplog.records if "another callback" in r.getMessage()]
    model, trace = _model(), LRTrace()
    cb = AutopilotCallback(x, y, batch_size=32, restart_on_overfit=False, plateau=False)
    with caplog.at_level("WARNING", logger="lrkit.autopilot"):
        model.fit(x, y, batch_size=32, epochs=4, callbacks=[cb, _Halves(), trace], verbose=0)
    said = [r.getMessage() for r in caplog.records if "another callback" in r.getMessage()]
    assert len(said) == 1 and "at step 40 " in said[0] and "ReduceLROnPlateau" in said[0]
    np.testing.assert_allclose(trace.lrs, cb.plan.schedule(np.arange(80)), rtol=1e-5)  # the plan, flown

class _Batches(keras.utils.PyDataset):
    def __init__(self, x, y, batch=32):
        super().__init__()
        self.x, self.y, self.batch = x, y, batch

    def __len__(self):
        return len(self.x) // self.batch

    def __getitem__(self, i):
        return self.x[i * self.batch:(i + 1) * self.batch], self.y[i * self.batch:(i + 1) * self.batch]


def test_a_pydataset_given_as_fit_takes_it_flies_the_plan():
    # AutopilotCallback(pydataset) and model.fit(pydataset): the finder and the outputs check read
    # the batches (the check once sliced the PyDataset like an array)
    x, y, _, _ = _data()
    model, trace = _model(), LRTrace()
    cb = AutopilotCallback(_Batches(x, y))
    model.fit(_Batches(x, y), epochs=5, callbacks=[cb, trace], verbose=0)
    assert cb.plan.train_steps == 100 and cb.finder.details["run_shape"]["epochs"] == 5
    assert max(trace.lrs) == pytest.approx(cb.plan.peak_lr, rel=1e-5) and 1e-4 < cb.plan.peak_lr < 1.0


def test_refuses_a_schedule_already_attached():
    x, y, _, _ = _data()
    sched = keras.optimizers.schedules.CosineDecay(1e-3, 100)
    model = _model(keras.optimizers.Adam(learning_rate=sched))
    with pytest.raises(AutopilotError, match="a schedule already drives it"):
        model.fit(x, y, batch_size=32, epochs=1, callbacks=[AutopilotCallback(x, y, batch_size=32)], verbose=0)


def test_needs_the_finders_data_and_the_run_length():
    with pytest.raises(AutopilotError, match="does not see fit"):
        AutopilotCallback()

    x, y, _, _ = _data()

    def stream():
        while True:
            for i in range(0, 640, 32):
                yield x[i:i + 32], y[i:i + 32]

    model = _model()
    with pytest.raises(AutopilotError, match="pass train_steps=N"):   # a generator: fit() knows no length
        model.fit(stream(), epochs=2, callbacks=[AutopilotCallback(x, y, batch_size=32)], verbose=0)


def test_resume_from_state_path_runs_no_finder_and_continues(tmp_path, monkeypatch):
    x, y, xv, yv = _data()
    full = LRTrace()
    _model().fit(x, y, batch_size=32, epochs=4, shuffle=False, callbacks=[AutopilotCallback(x, y, batch_size=32), full],
                 verbose=0)
    state = tmp_path / "autopilot.json"
    first = LRTrace()
    model = _model()
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False,
              callbacks=[AutopilotCallback(x, y, batch_size=32, train_steps=80, state_path=state), first], verbose=0)
    model.save(tmp_path / "m.keras")

    def no_finder(*a, **k):
        raise AssertionError("the finder ran again on resume")

    monkeypatch.setattr(keras_trainer, "find_lr_keras", no_finder)
    restored = keras.models.load_model(tmp_path / "m.keras")
    second, cb = LRTrace(), AutopilotCallback(x, y, batch_size=32, train_steps=80, state_path=state)
    restored.fit(x, y, batch_size=32, initial_epoch=2, epochs=4, shuffle=False, callbacks=[cb, second], verbose=0)
    assert cb.finder is None and cb.events[-1].kind == "resume"
    np.testing.assert_allclose(first.lrs + second.lrs, full.lrs, rtol=1e-6)


@pytest.mark.parametrize("every", [25, 0])
def test_a_network_that_dies_is_rolled_back(every):
    x, y = unscaled_wine()  # an LR too high kills the ReLUs in a few steps
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((13,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cb = AutopilotCallback(x[:130], y[:130], batch_size=16, val_data=(x[130:], y[130:]), peak_lr=3.0,
                           check_outputs_every=every)
    model.fit(x[:130], y[:130], batch_size=16, epochs=20, callbacks=[cb], verbose=0, shuffle=False)
    died = [e for e in cb.events if "network died" in e.message]
    val = float(model.evaluate(x[130:], y[130:], verbose=0))
    if every:  # the LR was too high for the loss to show it: it fell from ~30 to the dead level
        assert died and "lowered the LR" in died[0].message
        assert val < 0.8
    else:  # unmeasured, the same run ends at the constant prediction's loss
        assert not died and val > 1.0


LR_THAT_KILLS = 3.0  # a constant LR far too high for unscaled inputs: the network dies in a few steps


@pytest.mark.parametrize("every", [25, 0])
def test_the_doctor_callbacks_guard_rolls_back_a_network_that_dies(every):
    from lrkit.keras import LRDoctorCallback

    x, y = unscaled_wine()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((13,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=LR_THAT_KILLS),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cb = LRDoctorCallback(guard=True, snapshot_every=10, check_outputs_on=x[130:], check_outputs_every=every)
    model.fit(x[:130], y[:130], batch_size=16, epochs=20, callbacks=[cb], verbose=0, shuffle=False)
    from lrkit.collapse import COLLAPSED
    from lrkit.integrations.keras.trainer import spread_on

    died = [r for r in cb.interventions if "network died" in r.message]
    spread = spread_on(model, x[130:])
    if every:  # rolled back to a live state (how well it trains after is the LR ladder's business)
        assert died and died[0].restored_to <= died[0].onset
        assert spread > COLLAPSED
    else:  # unmeasured, the run ends dead
        assert not died and spread <= COLLAPSED


def test_disk_snapshots_last_across_fits_until_closed(tmp_path):
    import os

    x, y, xv, yv = _data()
    model = _model()
    cb = AutopilotCallback(x, y, batch_size=32, val_data=(xv, yv), train_steps=120, storage="disk",
                           storage_dir=tmp_path)
    model.fit(x, y, batch_size=32, epochs=3, validation_data=(xv, yv), callbacks=[cb], verbose=0)
    path = cb.pilot.guard.storage_path
    assert "manifest.json" in os.listdir(path)               # a later fit() can still roll back into this one
    model.fit(x, y, batch_size=32, epochs=3, validation_data=(xv, yv), callbacks=[cb], verbose=0)
    assert cb.pilot.guard.storage_path == path and [e for e in cb.events if e.kind == "rollback"] == []
    cb.close()
    assert os.listdir(tmp_path) == []
    with pytest.raises(AutopilotError, match="storage_dir is only used with storage='disk'"):
        AutopilotCallback(x, y, batch_size=32, storage_dir=tmp_path)


def test_a_run_that_overfits_early_is_restarted_at_a_lower_lr():
    # 60 training digits for 75 epochs of 4 steps, validated every epoch. The autopilot's own scale
    # expects the overfitting (the finder divides its answer for many epochs, lrkit.finder.regime);
    # at the scale it would take without that (5x), the run fits them within a few epochs and the
    # validation loss climbs from there, and the early-overfitting restart steps in
    x, y, xv, yv = _data()
    x, y = x[:60], y[:60]

    def run(**kw):
        model = _model(keras.optimizers.SGD(learning_rate=1.0, momentum=0.9))
        cb = AutopilotCallback(x, y, batch_size=16, val_data=(xv, yv), **kw)
        model.fit(x, y, batch_size=16, epochs=75, validation_data=(xv, yv), callbacks=[cb], verbose=0)
        return cb, model.evaluate(xv, yv, verbose=0)

    check_planned_and_restarted(run, 0.5)


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_steps_per_execution_counts_every_batch_on_jax_and_tensorflow(backend):
    # fit(steps_per_execution=4) calls the batch callbacks once per 4 batches (JAX and TensorFlow;
    # the torch backend refuses it): counted as steps, the calls ran the autopilot's schedule 4x
    # slow (the run ended near its peak) and dated the doctor's steps 4x early
    code = textwrap.dedent("""
        import keras
        from sklearn.datasets import load_digits
        from lrkit.keras import AutopilotCallback, LRDoctorCallback
        assert keras.backend.backend() == "__BACKEND__"
        x, y = load_digits(return_X_y=True)
        x, y = (x[:640] / 16).astype("float32"), y[:640]

        def model():
            keras.utils.set_random_seed(0)
            m = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
            m.compile(optimizer=keras.optimizers.Adam(), steps_per_execution=4,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            return m

        m = model()
        pilot = AutopilotCallback(x, y, batch_size=32, plateau=False, restart_on_overfit=False)
        m.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[pilot])
        plan = pilot.plan
        assert plan.train_steps == 60 and int(m.optimizer.iterations) == 60
        assert pilot.pilot.state_dict()["last_step"] == 59 and pilot.events == []
        lr = float(m.optimizer.learning_rate)  # set before the last span of 4 batches, steps 56-59
        assert abs(lr - plan.schedule(56)) <= 1e-6 * plan.peak_lr, (lr, plan.schedule(56))
        assert lr < 0.1 * plan.peak_lr  # decayed

        doctor = LRDoctorCallback()
        model().fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[doctor])
        assert [s for s, _, _ in doctor.history] == list(range(3, 40, 4)), doctor.history

        # the guard's mid-epoch rollback holds: on JAX Keras writes the epoch's state back into the
        # variables whenever a callback reads self.model, and reads them again before the next batch;
        # on TF the traced steps read and write the variables themselves
        class Spike(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):  # one step at LR 1e6: step 8
                if self.params.get("epoch", 0) == 0 and batch in (8, 9):
                    self.model.optimizer.learning_rate = 1e6 if batch == 8 else 0.05

            def on_epoch_begin(self, epoch, logs=None):
                self.params["epoch"] = epoch

        m = model()
        m.compile(optimizer=keras.optimizers.SGD(0.05), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        guard = LRDoctorCallback(guard=True, snapshot_every=5)
        m.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[Spike(), guard])
        (rollback,) = guard.interventions
        losses = dict((s, l) for s, l, _ in guard.history)
        assert losses[9] > 1e6 and rollback.restored_to <= 8, (rollback, losses)  # step 8 trained at 1e6
        assert max(v for s, v in losses.items() if s > rollback.step) < 3.0, losses  # restored, not wrecked
        print("ok")
    """).replace("__BACKEND__", backend)
    if backend == "tensorflow" and importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is not installed (pip install tensorflow-cpu)")
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_a_fit_whose_data_runs_out_before_the_plan_ends_is_said(caplog):
    # fit(steps_per_epoch=...) on arrays: Keras stops when the input runs out (20 batches of 32 in
    # 640 rows, 8 asked per epoch: epoch 3 has 4), short of the 40 steps planned
    x, y, _, _ = _data()
    model = _model()
    pilot = AutopilotCallback(x, y, batch_size=32, plateau=False, restart_on_overfit=False)
    with caplog.at_level("WARNING", logger="lrkit.autopilot"):
        model.fit(x, y, batch_size=32, epochs=5, steps_per_epoch=8, verbose=0, callbacks=[pilot])
    assert pilot.plan.train_steps == 40 and pilot._step < 0.95 * 40
    said = [r.getMessage() for r in caplog.records if "the run ended after" in r.getMessage()]
    assert said == [pilot.pilot.ended(pilot._step)] and f"after {pilot._step} of the 40 steps" in said[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="lrkit.autopilot"):  # a run that goes the distance: nothing said
        _model().fit(x, y, batch_size=32, epochs=2, verbose=0,
                     callbacks=[AutopilotCallback(x, y, batch_size=32, plateau=False, restart_on_overfit=False)])
    assert not [r for r in caplog.records if "the run ended after" in r.getMessage()]
