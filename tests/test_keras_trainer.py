"""KerasTrainer / find_lr_keras with real Keras 3 models (KERAS_BACKEND=torch via conftest).

Checked: bitwise restore of weights, BatchNormalization statistics, seed generators, optimizer
variables (LR and iteration counter included), metrics and RNGs after a normal end, a divergence,
an exception or Ctrl-C raised by the data mid-test, and the verification runs; an optimizer not
built before the test; dropout randomness (torch's generator and a Keras SeedGenerator) replayed
after a restore; the batch order of arrays, PyDatasets and iterables (Hypothesis for the arrays);
evaluate(); the optimizer families and their default ranges; a real task (scikit-learn digits MLP
with Adam); bad input refused with the model untouched; the jax backend in a subprocess.
"""
from __future__ import annotations

import doctest
import math
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

from lrkit.finder import FinderResult  # noqa: E402
from lrkit.finder.trainer import Trainer  # noqa: E402
from lrkit.integrations.keras import trainer as keras_trainer  # noqa: E402
from lrkit.integrations.keras.trainer import KerasTrainer, find_lr_keras  # noqa: E402

pytestmark = [pytest.mark.keras, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


# -- a bitwise picture of everything -------------------------------------------------------------
def _bits(v) -> tuple:
    a = np.array(keras.ops.convert_to_numpy(v))
    return (v.path, str(a.dtype), a.shape, a.tobytes())


def picture(model) -> dict:
    pic = {
        "model": [_bits(v) for v in model.variables],  # weights, BN statistics, seed generators
        "optimizer": [_bits(v) for v in model.optimizer.variables],  # slots, iterations, learning rate
        "optimizer_built": model.optimizer.built,
        "metrics": [_bits(v) for v in model.metrics_variables],
        "rng_python": random.getstate(),
        "rng_numpy": [x.tobytes() if isinstance(x, np.ndarray) else x for x in np.random.get_state()],
    }
    gen = keras_trainer._global_seed_generator()  # unseeded keras.random calls draw from it
    pic["keras_global_seed"] = None if gen is None else _bits(gen.state)[1:]
    if keras.backend.backend() == "torch":
        import torch

        pic["rng_torch"] = torch.get_rng_state().numpy().tobytes()
    return pic


def values(pic: dict, key: str) -> list[tuple]:
    """The variables of one part of a picture without their paths (which hold the model's name)."""
    return [v[1:] for v in pic[key]]


def assert_untouched(before: dict, after: dict) -> None:
    """Equal, except that an optimizer unbuilt before is built now (with the values it had) and
    metrics that Keras builds on the first step exist now, reset."""
    if before["optimizer_built"]:
        assert after == before
        return
    rest = ("optimizer", "optimizer_built", "metrics")
    assert {k: v for k, v in after.items() if k not in rest} == {k: v for k, v in before.items() if k not in rest}
    assert after["optimizer_built"]
    assert set(before["optimizer"]) <= set(after["optimizer"])  # iterations, learning rate
    assert set(before["metrics"]) <= set(after["metrics"])
    assert all(not any(b) for _, _, _, b in set(after["metrics"]) - set(before["metrics"]))  # new ones: reset


def identities(model) -> list[int]:
    return [id(v) for v in model.variables + model.optimizer.variables]


def lr_of(model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


# -- fixtures ------------------------------------------------------------------------------------
def make_data(n=128, d=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype("float32")
    y = ((x[:, 0] > 0).astype("int64") + (x[:, 1] > 0.5)).clip(max=classes - 1)
    return x, y


OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(1e-3),
    "sgd_momentum": lambda: keras.optimizers.SGD(1e-2, momentum=0.9, nesterov=True),
    "adamw": lambda: keras.optimizers.AdamW(1e-3, weight_decay=0.01),
    "rmsprop": lambda: keras.optimizers.RMSprop(1e-3, momentum=0.5),
}


def make_model(opt="adam", *, dropout_seed=None, bn=True, dropout=True, metrics=("accuracy",), seed=0):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((8,)), keras.layers.Dense(16, activation="relu")]
    if bn:
        layers.append(keras.layers.BatchNormalization())
    if dropout:
        layers.append(keras.layers.Dropout(0.3, seed=dropout_seed))
    layers.append(keras.layers.Dense(3))
    model = keras.Sequential(layers)
    model.compile(
        optimizer=OPTIMIZERS[opt]() if isinstance(opt, str) else opt,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=list(metrics),
    )
    return model


def warm(model, steps=3):
    """A few real steps: the optimizer has slots and an iteration count, BN statistics move."""
    x, y = make_data()
    model.fit(x[: 32 * steps], y[: 32 * steps], batch_size=32, epochs=1, verbose=0, shuffle=False)
    random.seed(6)
    np.random.seed(5)


class Boom(Exception):
    pass


class FailingData(keras.utils.PyDataset):
    """Batches of 16 from arrays; raises ``exc`` when batch ``fail_at`` is asked for."""

    def __init__(self, fail_at=None, exc=None, n=128, batch=16):
        super().__init__()
        self.x, self.y = make_data(n)
        self.fail_at, self.exc, self.batch, self.asked = fail_at, exc, batch, []

    @property
    def num_batches(self):
        return math.ceil(len(self.x) / self.batch)

    def __getitem__(self, i):
        self.asked.append(i)
        if i == self.fail_at:
            raise self.exc
        s = slice(i * self.batch, (i + 1) * self.batch)
        return self.x[s], self.y[s]


# -- bitwise restore -----------------------------------------------------------------------------
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("end_lr", [1e-2, 1e4], ids=["normal_end", "diverges"])
def test_bitwise_restore(opt_name, end_lr):
    model = make_model(opt_name)
    warm(model)
    before, ids, lr = picture(model), identities(model), lr_of(model)
    x, y = make_data()
    res = find_lr_keras(model, x, y, batch_size=16, start_lr=1e-5, end_lr=end_lr, num_iter=30, progress=False,
                        verify=False)
    assert isinstance(res, FinderResult)
    assert res.stopped_early == (end_lr > 1)
    assert picture(model) == before
    assert identities(model) == ids  # assigned in place: the same variable objects
    assert lr_of(model) == lr


def test_bitwise_restore_with_verification_runs_and_validation():
    model = make_model("sgd_momentum")
    warm(model)
    before = picture(model)
    x, y = make_data()
    xv, yv = make_data(64, seed=1)
    res = find_lr_keras(model, x, y, batch_size=16, val_data=(xv, yv), start_lr=1e-4, end_lr=10.0, num_iter=40,
                        progress=False, verify_steps=8)
    assert res.details["verify_steps"] == 8 and res.details["verify_steps_used"] > 0
    assert res.details["score"] == "evaluate()"
    assert picture(model) == before


@pytest.mark.parametrize("exc", [Boom("data broke"), KeyboardInterrupt()], ids=["exception", "ctrl_c"])
def test_restore_after_the_data_raises_mid_test(exc):
    model = make_model("adam")
    warm(model)
    before, lr = picture(model), lr_of(model)
    data = FailingData(fail_at=5, exc=exc)  # 8 batches a pass: the test is 5 steps in
    with pytest.raises(type(exc)):
        find_lr_keras(model, dataset=data, start_lr=1e-4, end_lr=1.0, num_iter=30, progress=False, verify=False)
    assert data.asked == [0, 1, 2, 3, 4, 5]
    assert picture(model) == before
    assert lr_of(model) == lr


def test_restore_after_the_progress_callback_raises():
    model = make_model("rmsprop")
    warm(model)
    before = picture(model)
    x, y = make_data()

    def progress(i, lr, loss):
        if i == 7:
            raise Boom("callback broke")

    with pytest.raises(Boom):
        find_lr_keras(model, x, y, start_lr=1e-4, end_lr=1.0, num_iter=30, progress=progress, verify=False)
    assert picture(model) == before


def test_an_unbuilt_optimizer_is_built_and_left_as_freshly_built():
    model, twin = make_model("adam"), make_model("adam")  # same seed: identical
    assert not model.optimizer.built
    x, y = make_data()
    find_lr_keras(model, x, y, start_lr=1e-5, end_lr=1e2, num_iter=30, progress=False, verify=False)
    twin.optimizer.build(twin.trainable_variables)  # what Keras does before its first step
    a, b = picture(model), picture(twin)
    assert a["optimizer_built"] and len(a["optimizer"]) == 2 + 2 * len(model.trainable_variables)
    assert values(a, "model") == values(b, "model") and values(a, "optimizer") == values(b, "optimizer")
    for m in (model, twin):  # and training afterwards is the same, bit for bit (dropout included)
        # (train_on_batch, not fit: fit's first call on a model whose compiled metrics are not built
        # yet iterates its torch DataLoader once more, which draws an extra torch seed)
        keras.utils.set_random_seed(3)
        for i in range(4):
            m.train_on_batch(x[32 * i: 32 * (i + 1)], y[32 * i: 32 * (i + 1)])
    assert values(picture(model), "model") == values(picture(twin), "model")
    assert values(picture(model), "optimizer") == values(picture(twin), "optimizer")


def test_gradient_accumulation_reports_the_updates_batch_and_leaves_the_accumulators_as_they_were():
    """Keras' own accumulation (``Adam(gradient_accumulation_steps=4)``): a step is a batch, as Keras
    counts them, and the batch of an update is four of them; the accumulators are put back with the
    rest of the optimizer, bit for bit (warm: mid-way through an accumulation)."""
    model = make_model(keras.optimizers.Adam(1e-3, gradient_accumulation_steps=4))
    x, y = make_data()
    model.fit(x[:32 * 6], y[:32 * 6], batch_size=32, epochs=1, verbose=0, shuffle=False)  # 6 batches: 2 of 4 pending
    before = picture(model)
    res = find_lr_keras(model, x, y, batch_size=8, num_iter=24, progress=False, verify=False)
    assert res.batch_size == 32 and res.details["range_test_steps"] == 24
    assert_untouched(before, picture(model))
    plain = find_lr_keras(make_model("adam"), x, y, batch_size=8, num_iter=24, progress=False, verify=False)
    assert plain.batch_size == 8


def test_metrics_built_during_the_test_end_reset_and_old_ones_keep_their_values():
    model = make_model("adam", metrics=("accuracy",))
    x, y = make_data()
    assert [v.path for v in model.metrics_variables] == ["loss/total", "loss/count"]  # accuracy not built yet
    model.evaluate(x, y, verbose=0)  # now built, with values
    before = picture(model)
    find_lr_keras(model, x, y, start_lr=1e-5, end_lr=1.0, num_iter=20, progress=False, verify=False)
    assert picture(model)["metrics"] == before["metrics"]


# -- randomness ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dropout_seed", [None, 11], ids=["unseeded", "seeded"])
def test_dropout_randomness_is_replayed_after_a_restore(dropout_seed):
    model = make_model("adam", dropout_seed=dropout_seed, bn=False)
    x, y = make_data()
    out1 = keras.ops.convert_to_numpy(model(x[:16], training=True))
    out2 = keras.ops.convert_to_numpy(model(x[:16], training=True))
    assert not np.array_equal(out1, out2)  # the masks really are random
    t = KerasTrainer(model, x, y, batch_size=16)
    state = t.snapshot()
    first = [t.step(1e-3) for _ in range(4)]
    t.restore(state)
    again = [t.step(1e-3) for _ in range(4)]
    assert first == again
    t.restore(state)
    keras.ops.convert_to_numpy(model(x[:16], training=True))  # one extra mask drawn: the RNG moves on
    assert [t.step(1e-3) for _ in range(4)] != first


class Noisy(keras.layers.Layer):
    """Adds unseeded noise in training: Keras draws it from its global SeedGenerator."""

    def call(self, x, training=False):
        return x + 0.5 * keras.random.normal(keras.ops.shape(x)) if training else x


@pytest.mark.parametrize("exists", [False, True], ids=["created_in_the_test", "already_there"])
def test_unseeded_keras_random_noise_is_replayed_after_a_restore(exists):
    from keras.src.backend.common import global_state

    global_state.set_global_attribute("global_seed_generator", None)
    keras.utils.set_random_seed(0)
    if exists:
        keras.random.normal((1,))  # creates Keras' global SeedGenerator
    model = keras.Sequential([keras.Input((8,)), Noisy(), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = make_data()
    t = KerasTrainer(model, x, y, batch_size=16)
    state = t.snapshot()
    first = [t.step(1e-3) for _ in range(3)]
    t.restore(state)
    assert [t.step(1e-3) for _ in range(3)] == first
    if keras.backend.backend() != "tensorflow":  # there the traced steps keep the generator they captured
        t.restore(state)
        keras.random.normal((1,))  # one draw from the global generator: the noise moves on
        assert [t.step(1e-3) for _ in range(3)] != first


class Augmented(FailingData):
    """Augmentation noise from the NumPy and Python global RNGs: both must be restored."""

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x + np.random.normal(0, 0.1, size=x.shape).astype("float32") * random.random(), y


def test_numpy_and_python_rngs_restored_and_two_tests_agree():
    model = make_model("sgd_momentum")
    warm(model)
    before = picture(model)
    kw = dict(dataset=Augmented(), start_lr=1e-4, end_lr=1.0, num_iter=25, progress=False, verify=False)
    a = find_lr_keras(model, **kw)
    assert picture(model) == before
    b = find_lr_keras(model, **kw)
    np.testing.assert_array_equal(a.losses, b.losses)


# -- data ----------------------------------------------------------------------------------------
def probe_model():
    """Loss = mean of the batch's y at a negligible LR: the losses spell out the batch order."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, kernel_initializer="zeros",
                                                                    bias_initializer="zeros")])
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mae")
    return model


TINY = 1e-30


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 40), data=st.data())
def test_array_batches_are_in_order_exactly_batch_size_and_wrap(n, data):
    bs = data.draw(st.integers(1, n), label="batch_size")
    steps = data.draw(st.integers(1, 12), label="steps")
    model = probe_model()
    x = np.zeros((n, 1), "float32")
    y = np.arange(n, dtype="float32")[:, None]
    t = KerasTrainer(model, x, y, batch_size=bs)
    got = [t.step(TINY) for _ in range(steps)]
    want = [np.mean((k * bs + np.arange(bs)) % n) for k in range(steps)]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_data_position_is_part_of_the_snapshot():
    model = probe_model()
    x, y = np.zeros((10, 1), "float32"), np.arange(10, dtype="float32")[:, None]
    t = KerasTrainer(model, x, y, batch_size=4)
    t.step(TINY)
    mid = t.snapshot()  # one batch in
    after = [t.step(TINY) for _ in range(3)]
    assert after == pytest.approx([5.5, 4.5, 3.5])  # [4..7], [8, 9, 0, 1], [2..5]
    t.restore(mid)
    assert [t.step(TINY) for _ in range(3)] == after


class Indexed(keras.utils.PyDataset):
    def __init__(self, n):
        super().__init__()
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return np.zeros((2, 1), "float32"), np.full((2, 1), float(i), "float32")


@pytest.mark.parametrize("kind", ["pydataset", "list", "tuple_of_batches"])
def test_dataset_batches_cycle_and_rewind(kind):
    batches = [(np.zeros((2, 1), "float32"), np.full((2, 1), float(i), "float32")) for i in range(3)]
    dataset = {"pydataset": Indexed(3), "list": batches, "tuple_of_batches": tuple(batches)}[kind]
    t = KerasTrainer(probe_model(), dataset=dataset)
    assert [t.step(TINY) for _ in range(2)] == pytest.approx([0, 1])
    state = t.snapshot()  # mid-pass
    later = [t.step(TINY) for _ in range(4)]
    assert later == pytest.approx([2, 0, 1, 2])  # started again when exhausted
    t.restore(state)
    assert [t.step(TINY) for _ in range(4)] == later


def test_batches_passed_as_x_are_the_dataset_as_model_fit_takes_them():
    # model.fit(x=pydataset) is how Keras users pass batches; find_lr(model, pydataset) once tried
    # to turn the PyDataset into an array (a NumPy error about an inhomogeneous shape)
    t = KerasTrainer(probe_model(), Indexed(3))
    assert [t.step(TINY) for _ in range(4)] == pytest.approx([0, 1, 2, 0])
    batches = [(np.zeros((2, 1), "float32"), np.full((2, 1), float(i), "float32")) for i in range(3)]
    with pytest.raises(ValueError, match="one-shot iterator"):
        KerasTrainer(probe_model(), iter(batches))  # a generator cannot be rewound: said so
    x, y = make_data()
    res = find_lr_keras(make_model(), _XY(x, y, 16), train_steps=300, progress=False)
    assert res.method.startswith("verified") and 1e-5 < res.suggestion < 10


class _XY(keras.utils.PyDataset):
    def __init__(self, x, y, batch):
        super().__init__()
        self.x, self.y, self.batch = x, y, batch

    def __len__(self):
        return len(self.x) // self.batch

    def __getitem__(self, i):
        sl = slice(i * self.batch, (i + 1) * self.batch)
        return self.x[sl], self.y[sl]


def test_pydataset_epoch_hooks_are_not_called():
    class Hooked(Indexed):
        calls = 0

        def on_epoch_end(self):
            Hooked.calls += 1

    t = KerasTrainer(probe_model(), dataset=Hooked(2))
    for _ in range(5):
        t.step(TINY)
    assert Hooked.calls == 0


def test_multi_input_dict_arrays_and_sample_weights_in_batches():
    a, b = keras.Input((2,), name="a"), keras.Input((3,), name="b")
    out = keras.layers.Dense(1)(keras.layers.Concatenate()([a, b]))
    model = keras.Model({"a": a, "b": b}, out)
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    x = {"a": rng.standard_normal((20, 2)).astype("float32"), "b": rng.standard_normal((20, 3)).astype("float32")}
    y = rng.standard_normal((20, 1)).astype("float32")
    before = picture(model)
    res = find_lr_keras(model, x, y, batch_size=5, start_lr=1e-4, end_lr=1.0, num_iter=10, progress=False,
                        verify=False)
    assert len(res.losses) >= 2
    assert_untouched(before, picture(model))
    # (x, y, sample_weight) batches: a zero weight on every sample gives a zero loss
    batches = [({"a": x["a"][:5], "b": x["b"][:5]}, y[:5], np.zeros(5, "float32"))]
    assert KerasTrainer(model, dataset=batches).step(0.1) == 0.0


def test_batch_size_is_reported_and_checked_for_datasets():
    x, y = make_data()
    model = make_model("adam")
    assert find_lr_keras(model, x, y, num_iter=10, progress=False, verify=False).batch_size == 32
    assert find_lr_keras(model, dataset=FailingData(), num_iter=10, progress=False, verify=False).batch_size is None
    res = find_lr_keras(model, dataset=FailingData(), batch_size=16, num_iter=10, progress=False, verify=False)
    assert res.batch_size == 16
    before = picture(model)
    with pytest.raises(ValueError, match="batch of 16 samples but batch_size=8"):
        find_lr_keras(model, dataset=FailingData(), batch_size=8, num_iter=10, progress=False, verify=False)
    assert picture(model) == before


def test_target_batch_size_rescales_the_same_curve():
    x, y = make_data()
    model = make_model("adam")
    kw = dict(batch_size=16, start_lr=1e-5, end_lr=1.0, num_iter=30, progress=False, verify=False)
    a = find_lr_keras(model, x, y, **kw)
    b = find_lr_keras(model, x, y, target_batch_size=64, **kw)
    np.testing.assert_array_equal(a.losses, b.losses)  # restored bitwise: the same test twice
    assert b.suggestion == pytest.approx(a.suggestion * 2.0)  # Adam: square-root rule, sqrt(64 / 16)


# -- evaluate ------------------------------------------------------------------------------------
def test_evaluate_arrays_pydataset_iterable_and_none():
    model = make_model("adam")
    warm(model)
    xv, yv = make_data(48, seed=2)
    ref = float(model.evaluate(xv, yv, batch_size=16, verbose=0, return_dict=True)["loss"])
    x, y = make_data()
    assert KerasTrainer(model, x, y).evaluate() is None
    assert KerasTrainer(model, x, y, batch_size=16, val_data=(xv, yv)).evaluate() == pytest.approx(ref, rel=1e-6)

    class Val(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            s = slice(16 * i, 16 * (i + 1))
            return xv[s], yv[s]

    assert KerasTrainer(model, x, y, val_data=Val()).evaluate() == pytest.approx(ref, rel=1e-5)
    uneven = [(xv[:40], yv[:40]), (xv[40:], yv[40:])]  # weighted by batch size, as model.evaluate
    assert KerasTrainer(model, x, y, val_data=uneven).evaluate() == pytest.approx(ref, rel=1e-5)


def test_the_trainer_implements_the_protocol():
    x, y = make_data()
    assert isinstance(KerasTrainer(make_model("adam"), x, y), Trainer)


# -- families and defaults -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "opt, family, lo",
    [
        (lambda: keras.optimizers.Adam(1e-3), "adam", 1e-7),
        (lambda: keras.optimizers.SGD(1e-2, momentum=0.9), "sgd_momentum", 1e-7),
        (lambda: keras.optimizers.SGD(1e-2), "sgd", 1e-7),
        (lambda: keras.optimizers.AdamW(1e-3), "adamw", 1e-7),
        (lambda: keras.optimizers.RMSprop(1e-3), "rmsprop", 1e-7),
        (lambda: keras.optimizers.Adagrad(1e-2), "adagrad", 1e-6),
        (lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-3)), "adam", 1e-7),
    ],
    ids=["adam", "sgd_momentum", "sgd", "adamw", "rmsprop", "adagrad", "loss_scale_adam"],
)
def test_family_and_default_range(opt, family, lo):
    model = make_model(opt(), bn=False, dropout=False)
    x, y = make_data()
    before, lr = picture(model), lr_of(model)
    res = find_lr_keras(model, x, y, num_iter=12, progress=False, verify=False)
    assert res.details["family"] == family
    assert res.lrs[0] == lo
    assert_untouched(before, picture(model))
    assert lr_of(model) == lr


# -- a real task ---------------------------------------------------------------------------------
def digits():
    load_digits = pytest.importorskip("sklearn.datasets").load_digits
    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm].astype("float32"), y[perm].astype("int64")
    xt, yt, xv, yv = x[360:], y[360:], x[:360], y[:360]
    mu, sd = xt.mean(0), xt.std(0)
    sd[sd == 0] = 1.0
    return (xt - mu) / sd, yt, (xv - mu) / sd, yv


def digits_mlp(lr=1e-3):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def test_digits_mlp_with_adam_suggestion_is_sane_and_trains_better_than_a_tiny_lr():
    xt, yt, xv, yv = digits()
    model = digits_mlp()
    before = picture(model)
    res = find_lr_keras(model, xt, yt, val_data=(xv, yv), progress=False)
    assert_untouched(before, picture(model))
    assert res.method == "verified" and res.details["family"] == "adam"
    assert 1e-4 <= res.suggestion <= 1e-1, res
    scores = {}
    for name, lr in (("suggested", res.suggestion), ("tiny", 1e-6)):
        m = digits_mlp(lr)
        m.fit(xt, yt, batch_size=32, epochs=1, verbose=0, shuffle=False)
        scores[name] = m.evaluate(xv, yv, verbose=0, return_dict=True)
    assert scores["suggested"]["loss"] < 0.5 * scores["tiny"]["loss"]
    assert scores["suggested"]["accuracy"] > 0.85 > scores["tiny"]["accuracy"]


# -- bad input: refused, model untouched --------------------------------------------------------
def schedule_model():
    model = make_model(keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.9)))
    return model


def gen():
    yield make_data(16)


BAD = {
    "not_a_model": (lambda m: dict(model=object()), "model must be a keras.Model, got object"),
    "start_ge_end": (lambda m: dict(start_lr=1.0, end_lr=1e-3), "start_lr must be < end_lr"),
    "start_negative": (lambda m: dict(start_lr=-1.0, end_lr=1.0), "start_lr must be a finite number > 0"),
    "num_iter": (lambda m: dict(num_iter=1), "num_iter must be an integer >= 2"),
    "mode": (lambda m: dict(mode="log"), "mode must be 'exp' or 'linear'"),
    "empty_x": (lambda m: dict(x=np.zeros((0, 8), "float32"), y=np.zeros(0, "int64")), r"x is empty \(0 samples\)"),
    "empty_pydataset": (lambda m: dict(x=None, y=None, dataset=Indexed(0)), r"dataset is empty \(num_batches == 0\)"),
    "empty_list": (lambda m: dict(x=None, y=None, dataset=[]), r"dataset is empty \(len\(dataset\) == 0\)"),
    "generator": (lambda m: dict(x=None, y=None, dataset=gen()), "one-shot iterator"),
    "no_data": (lambda m: dict(x=None, y=None), "no training data: pass x and y"),
    "both": (lambda m: dict(dataset=[make_data(16)]), "either x .and y. or dataset, not both"),
    "lengths": (lambda m: dict(y=np.zeros(5, "int64")), "same number of samples"),
    "batch_too_big": (lambda m: dict(batch_size=1000), r"batch_size must be <= the number of samples \(128\)"),
    "batch_zero": (lambda m: dict(batch_size=0), "batch_size must be None or an integer >= 1"),
    "verify_steps": (lambda m: dict(verify_steps=-1), "verify_steps must be None or an integer >= 0"),
    "verify_contradiction": (lambda m: dict(verify=False, verify_steps=5), "verify=False contradicts"),
    "val_tuple": (lambda m: dict(val_data=(1, 2, 3, 4)), "val_data as a tuple must be"),
    "val_empty": (lambda m: dict(val_data=(np.zeros((0, 8)), np.zeros(0))), "val_data is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_and_the_model_untouched(case):
    model = make_model("adam")
    x, y = make_data()
    make_kwargs, message = BAD[case]
    kwargs = dict(model=model, x=x, y=y, num_iter=10, progress=False, verify=False)
    kwargs.update(make_kwargs(model))
    before = picture(model)
    with pytest.raises(ValueError, match=message):
        find_lr_keras(**kwargs)
    assert picture(model) == before
    assert not model.optimizer.built  # not even built


def test_a_progress_that_is_neither_a_flag_nor_a_callback_is_a_type_error():
    model = make_model("adam")
    x, y = make_data()
    before = picture(model)
    with pytest.raises(TypeError, match=r"progress must be True, False or a callback progress\(i, lr, loss\), got str"):
        find_lr_keras(model, x, y, num_iter=10, progress="yes", verify=False)
    assert picture(model) == before


def test_uncompiled_unbuilt_and_frozen_models_are_refused():
    x, y = make_data()
    keras.utils.set_random_seed(0)
    uncompiled = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=r"model is not compiled: call model.compile\(optimizer=..., loss=...\)"):
        find_lr_keras(uncompiled, x, y, progress=False)
    unbuilt = keras.Sequential([keras.layers.Dense(3)])
    unbuilt.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="model is not built"):
        find_lr_keras(unbuilt, x, y, progress=False)
    assert not unbuilt.built
    frozen = make_model("adam")
    frozen.trainable = False
    frozen.compile(optimizer="adam", loss="mse")
    before = picture(frozen)
    with pytest.raises(ValueError, match="model has no trainable weights"):
        find_lr_keras(frozen, x, y, progress=False)
    assert picture(frozen) == before


def test_a_schedule_or_callable_learning_rate_is_refused_with_advice():
    x, y = make_data()
    model = schedule_model()
    before = picture(model)
    with pytest.raises(ValueError, match=r"LearningRateSchedule \(ExponentialDecay\).*compile with a float learning"):
        find_lr_keras(model, x, y, progress=False)
    assert picture(model) == before and not model.optimizer.built
    with pytest.raises(ValueError, match="not a settable variable"):
        find_lr_keras(make_model(keras.optimizers.SGD(learning_rate=lambda: 0.01)), x, y, progress=False)


@pytest.mark.parametrize("lr", [0.0, -1e-3, math.nan, math.inf, True, "0.1"])
def test_step_refuses_a_bad_lr(lr):
    x, y = make_data()
    t = KerasTrainer(make_model("adam"), x, y)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        t.step(lr)


def test_a_non_finite_first_loss_is_reported_and_restored():
    x, y = make_data()
    x = x.copy()
    x[:] = np.nan
    model = make_model("adam")
    before = picture(model)
    with pytest.raises(ValueError, match="loss is not finite at the first step"):
        find_lr_keras(model, x, y, num_iter=10, progress=False, verify=False)
    assert_untouched(before, picture(model))


# -- surface -------------------------------------------------------------------------------------
def test_progress_bar_runs(capsys):
    pytest.importorskip("rich")
    x, y = make_data()
    res = find_lr_keras(make_model("adam"), x, y, num_iter=10, progress=True, verify=False)
    assert len(res.losses) >= 2


def test_public_names():
    import lrkit

    assert lrkit.find_lr_keras is find_lr_keras and lrkit.KerasTrainer is KerasTrainer


def test_docstring_examples():
    result = doctest.testmod(keras_trainer, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.slow
def test_jax_backend_in_a_subprocess():
    pytest.importorskip("jax")
    code = textwrap.dedent("""
        import numpy as np, keras
        assert keras.backend.backend() == "jax"
        from lrkit.integrations.keras.trainer import KerasTrainer, find_lr_keras
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.BatchNormalization(), keras.layers.Dropout(0.3),
                                  keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        x = np.random.default_rng(0).normal(size=(128, 8)).astype("float32"); y = x[:, :1]
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
        pic = lambda: [np.array(keras.ops.convert_to_numpy(v)).tobytes()
                       for v in model.variables + model.optimizer.variables]
        before = pic()
        res = find_lr_keras(model, x, y, start_lr=1e-5, end_lr=1e3, num_iter=30, progress=False, verify=False)
        assert res.stopped_early and pic() == before
        t = KerasTrainer(model, x, y)
        s = t.snapshot(); a = [t.step(1e-3) for _ in range(3)]; t.restore(s)
        assert [t.step(1e-3) for _ in range(3)] == a and pic() != before
        t.restore(s); assert pic() == before
        import sys; assert "torch" not in sys.modules, "the Keras adapter imported torch on the jax backend"
        print("ok")
    """)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_sample_loss_scores_the_first_batches_drawn_and_the_finder_uses_it_without_val_data():
    """Without val_data the verification runs are scored on the first training batches drawn (up to
    SAMPLE_ROWS examples), the same at every call, as model.evaluate would score them."""
    from lrkit.finder.search import SAMPLE_ROWS

    model = make_model("adam", bn=False, dropout=False)
    x, y = make_data(n=512)
    t = KerasTrainer(model, x, y, batch_size=48)
    assert t.sample_loss() is None
    for _ in range(8):
        t.step(1e-3)
    rows = -(-SAMPLE_ROWS // 48) * 48  # whole batches, until they hold SAMPLE_ROWS examples
    ref = float(model.evaluate(x[:rows], y[:rows], batch_size=48, verbose=0, return_dict=True)["loss"])
    assert t.sample_loss() == pytest.approx(ref, rel=1e-5)
    res = find_lr_keras(make_model("adam", bn=False, dropout=False), x, y, batch_size=32, train_steps=400,
                        progress=False)
    assert res.details["score"] == "sample_loss()"
    assert len({c["start"] for c in res.details["candidates"]}) == 1  # one sample, one start for all
