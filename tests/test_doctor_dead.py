"""A network that dies mid-run (every input gets the same output) is diverging, and the guard rolls
it back: the core sign (lrkit.doctor.signs.dead), the torch probe that measures the outputs on the
training forward, and real runs under the torch autopilot, TorchDoctor, the Hugging Face and
Lightning autopilots."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _wine import unscaled_wine

from lrkit.collapse import COLLAPSED, OUTPUT_SPREAD, sample_indices
from lrkit.doctor import Doctor


def _run(spreads: list[float | None], every: int = 10, loss=lambda step: 0.2 + 2.0 * 0.98**step):
    """Feed a doctor a slowly improving loss and ``spreads[k]`` at step ``k * every``."""
    doc = Doctor(window=10)
    d = None
    for step in range(every * len(spreads)):
        k, r = divmod(step, every)
        metrics = {OUTPUT_SPREAD: spreads[k]} if r == 0 and spreads[k] is not None else {}
        d = doc.observe(step, loss(step), lr=0.1, metrics=metrics)
    return doc, d


def test_two_collapsed_measurements_after_a_live_one_are_a_dead_network():
    _, d = _run([0.6, 0.5, 0.7, 0.0, 1e-9])
    assert d.verdict == "diverging"
    assert d.step == 20  # the last live measurement: a rollback goes to a state from no later
    assert d.evidence["stuck"] == 1.0 and d.evidence["first_collapsed_step"] == 30
    assert "network died" in d.message and "step 30" in d.message
    assert any("lower the LR" in a for a in d.advice)


def test_one_collapsed_measurement_or_a_model_collapsed_from_the_start_is_not():
    assert _run([0.6, 0.0, 0.5, 0.6])[1].verdict != "diverging"  # one collapsed reading, live again
    assert _run([0.6, 0.5, 0.0])[1].verdict != "diverging"  # not yet twice
    assert _run([0.0, 0.0, 0.0, 0.0])[1].verdict != "diverging"  # a zero-initialised head, never live
    assert _run([0.0, 0.0, 0.4, 0.0, 0.0])[1].verdict == "diverging"  # it lived, then died


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(min_value=2 * COLLAPSED, max_value=5.0), min_size=1, max_size=12))
def test_live_spreads_of_any_size_never_raise_it_nor_a_metric_swing(spreads):
    # a live model's spread moving around is no finding of any sign (it is not a quality metric)
    _, d = _run(spreads, every=5)
    assert d.verdict not in ("diverging", "fluctuating"), (d.verdict, d.message)


def test_the_dead_signs_state_survives_a_state_dict_round_trip():
    doc, _ = _run([0.6, 0.5, 0.0])
    again = Doctor(window=10)
    again.load_state_dict(doc.state_dict())
    d = again.observe(30, 1.8, lr=0.1, metrics={OUTPUT_SPREAD: 0.0})
    assert d.verdict == "diverging" and d.step == 10


def test_sample_indices_are_spread_evenly_and_bounded():
    for n, most in [(10, 4), (1000, 256), (300, 299), (5, 5)]:
        idx = sample_indices(n, most)
        if n <= most:
            assert idx is None
            continue
        assert len(idx) <= most and idx[0] == 0 and idx[-1] == n - 1 and np.all(np.diff(idx) > 0)


# ---------------------------------------------------------------------------------------- torch
torch = pytest.importorskip("torch")


def _wine():
    x, y = map(torch.from_numpy, unscaled_wine())  # a step too large kills the ReLUs at once
    return (x[:130], y[:130]), (x[130:], y[130:])


def _mlp(seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(13, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))


def test_tensor_spread_samples_big_outputs_and_sees_a_sequence_models_positions():
    from lrkit.integrations.torch.outputs import tensor_spread

    torch.manual_seed(0)
    live = torch.randn(4, 3000, 50)  # (batch, positions, vocabulary): far more than the sample
    assert tensor_spread(live) > 0.5
    dead = torch.randn(1, 3000, 50).expand(4, 3000, 50)  # every example the same
    assert tensor_spread(dead) < COLLAPSED
    assert tensor_spread(torch.randn(1, 10)) is None and tensor_spread(torch.tensor(1.0)) is None


def test_the_probe_measures_the_first_step_then_every_nth_and_removes_its_hook():
    from lrkit.integrations.torch.outputs import SpreadProbe

    model = _mlp()
    probe = SpreadProbe(model, every=3)
    x = torch.randn(8, 13)
    seen = []
    for step in range(7):
        model(x)
        seen.append(OUTPUT_SPREAD in probe.take(step))
    assert seen == [True, False, False, True, False, False, True]
    probe.close()
    assert not model._forward_hooks
    with pytest.raises(ValueError, match="every"):
        SpreadProbe(model, every=0)


def _train_under_autopilot(every: int, peak_lr: float = 0.1, steps: int = 300):
    import lrkit.torch
    from torch.utils.data import DataLoader, TensorDataset

    (xt, yt), (xv, yv) = _wine()
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1.0)
    loader = DataLoader(TensorDataset(xt, yt), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(xv, yv), batch_size=64)
    # an LR fixed by hand that kills the network in its first steps: its loss then *falls* from
    # the unscaled start (~65) to the constant prediction's (~1.1) and no loss sign objects
    pilot = lrkit.torch.autopilot(model, opt, torch.nn.functional.cross_entropy, loader, train_steps=steps,
                                  val_loader=val, peak_lr=peak_lr, check_outputs_every=every)
    step = 0
    while step < steps:
        for xb, yb in loader:
            if step >= steps:
                break
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            pilot.after_step(loss)
            pilot.scheduler.step()
            step += 1
    with torch.no_grad():
        return pilot, torch.nn.functional.cross_entropy(model(xv), yv).item()


def test_the_torch_autopilot_rolls_a_dead_network_back_and_the_run_trains():
    chance = math.log(3)
    pilot, val = _train_under_autopilot(every=25)
    dead = [e for e in pilot.events if e.kind == "rollback" and "network died" in e.message]
    assert dead, [e.message for e in pilot.events]
    assert "rolled back to the state before step 0" in dead[0].message and "lowered the LR" in dead[0].message
    # trained, not sitting at the constant prediction (the autopilot's own scale, which the rollback
    # brings, is divided for the run's 37 passes over 130 wines, lrkit.finder.regime: slow here)
    assert val < 0.8 * chance
    # the same run without the outputs measured stays dead to its end
    pilot, val = _train_under_autopilot(every=0)
    assert not any("network died" in e.message for e in pilot.events)
    assert abs(val - 1.08) < 0.1


def test_a_healthy_torch_run_is_never_called_dead():
    pilot, val = _train_under_autopilot(every=5, peak_lr=0.01)
    assert pilot.events == [] and val < 0.5


def _train_under_torch_doctor(every: int):
    from lrkit.integrations.torch.doctor import TorchDoctor

    (xt, yt), _ = _wine()
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    with TorchDoctor(model, opt, snapshot_every=10, check_outputs_every=every) as watch:
        for step in range(200):
            idx = torch.randint(0, len(xt), (16,), generator=g)
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            watch.after_backward(loss)
            opt.step()
            watch.after_step(step, loss)
    assert not model._forward_hooks  # the with block took the probe's hook off
    with torch.no_grad():
        return watch, torch.nn.functional.cross_entropy(model(xt), yt).item()


def test_torch_doctor_rolls_back_a_network_that_dies():
    watch, loss = _train_under_torch_doctor(every=10)
    dead = [r for r in watch.interventions if "network died" in r.message]
    assert dead and dead[0].restored_to <= dead[0].onset  # a state from before the death
    assert loss < 0.9 and watch.diagnosis.verdict != "diverging"  # live, and trained past the dead level
    watch, loss = _train_under_torch_doctor(every=0)  # unmeasured, the same run ends dead
    assert watch.interventions == [] and loss > 1.0


def test_a_bad_check_outputs_every_is_refused_naming_it():
    from lrkit.integrations.torch.doctor import TorchDoctor

    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="check_outputs_every"):
        TorchDoctor(model, opt, check_outputs_every=-1)
    import lrkit.torch

    with pytest.raises(ValueError, match="check_outputs_every"):
        lrkit.torch.autopilot(model, opt, torch.nn.functional.cross_entropy, [(torch.zeros(2, 13), torch.zeros(2))],
                              train_steps=10, check_outputs_every=2.5)


def test_torch_trainer_measures_outputs_without_using_up_a_training_batch():
    from torch.utils.data import DataLoader, TensorDataset

    from lrkit.integrations.torch.trainer import TorchTrainer

    (xt, yt), _ = _wine()
    xt = xt / xt.abs().max(0).values  # scaled: a live network throughout

    def losses(measure: bool) -> list[float]:
        model = _mlp()
        loader = DataLoader(TensorDataset(xt, yt), batch_size=16, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
        trainer = TorchTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                               torch.nn.functional.cross_entropy, loader)
        out = []
        for step in range(20):
            if measure and step % 3 == 0:
                assert trainer.output_spread() > 0.01  # before the first step too: read ahead, not used up
            out.append(trainer.step(0.1))
        return out

    assert losses(measure=True) == losses(measure=False)


def test_a_doctor_restarted_after_a_rollback_remembers_the_model_lived():
    # the guard restarts the doctor when it rolls back into the opening stretch: a restored state
    # found collapsed is still a death (the run showed the model alive before), not a model that never lived
    doc, _ = _run([0.6, 0.5])
    doc.restart()
    assert doc.n_observations == 0
    for step in (30, 40):
        d = doc.observe(step, 1.1, lr=0.1, metrics={OUTPUT_SPREAD: 0.0})
    assert d.verdict == "diverging" and d.step == 10
    fresh = Doctor(window=10)
    for step in (30, 40):
        d = fresh.observe(step, 1.1, lr=0.1, metrics={OUTPUT_SPREAD: 0.0})
    assert d.verdict != "diverging"


def test_tensor_spread_copies_a_bounded_sample_of_a_large_output():
    from lrkit.collapse import MAX_COLS, MAX_ROWS
    from lrkit.integrations.torch.outputs import tensor_spread

    big = torch.randn(1024, 8, 5000)  # rows x positions x vocabulary: 41M values
    seen = []
    real = torch.Tensor.cpu

    def spy(t, *a, **k):
        seen.append(t.numel())
        return real(t, *a, **k)

    torch.Tensor.cpu = spy
    try:
        assert tensor_spread(big) > 0.5
    finally:
        torch.Tensor.cpu = real
    assert seen and max(seen) <= MAX_ROWS * MAX_COLS


def test_the_probe_reads_a_compiled_models_forward():
    from lrkit.integrations.torch.outputs import SpreadProbe

    model = _mlp()
    probe = SpreadProbe(model, every=5)
    compiled = torch.compile(model, backend="eager")  # dynamo traces the hook's flag, breaks on the reading
    x = torch.randn(32, 13)
    read = []
    for step in range(11):
        compiled(x)
        read.append(probe.take(step).get(OUTPUT_SPREAD))
    assert [r is not None for r in read] == [s % 5 == 0 for s in range(11)]
    assert all(r > 0.1 for r in read if r is not None)
    probe.close()
