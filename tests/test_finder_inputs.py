"""The finder warns when float inputs were never standardised (lrkit.finder.inputs), in torch, Keras and optax."""
from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lrkit.finder.inputs as inputs
from lrkit.finder.inputs import UNSCALED_RMS, unscaled_inputs

NOT_STANDARDISED = "the inputs are not standardised"


def test_docstring_examples():
    result = doctest.testmod(inputs, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@settings(max_examples=60, deadline=None)
@given(scale=st.floats(0.01, 1000.0), rows=st.integers(8, 200), cols=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_warns_exactly_when_the_root_mean_square_is_above_the_threshold(scale, rows, cols, seed):
    x = scale * np.random.default_rng(seed).normal(size=(rows, cols))
    rms = float(np.sqrt(np.mean(x ** 2)))
    said = unscaled_inputs(x.astype(np.float32))
    assert (said is not None) == (rms > UNSCALED_RMS * (1 + 1e-6)) or abs(rms - UNSCALED_RMS) < 1e-3 * UNSCALED_RMS
    if said is not None:
        assert said.startswith(NOT_STANDARDISED) and f"{rms:.3g}" in said


def test_what_is_not_a_feature_is_left_out():
    big = np.full((16, 4), 300.0)
    assert unscaled_inputs(big.astype(np.int64)) is None  # token ids, counts given as integers
    assert unscaled_inputs({"pixel_values": np.ones((16, 4)), "labels": big, "target": big, "y": big}) is None
    assert unscaled_inputs({"pixel_values": big, "labels": np.zeros(16)}) is not None
    assert unscaled_inputs([np.ones((16, 4)), big]) is not None  # several input arrays: all of them
    assert unscaled_inputs(np.array([np.nan, np.inf, 0.5])) is None  # non-finite values are not read
    assert unscaled_inputs(None) is None and unscaled_inputs([]) is None


def _digits(raw):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32) * (16.0 if raw else 1 / 16.0)  # raw: 0-256, as unscaled 8-bit pixels
    return x[:1024], y[:1024]


@pytest.mark.parametrize("raw", [False, True])
def test_torch_find_lr(raw):
    torch = pytest.importorskip("torch")
    import lrkit.torch as lt

    x, y = _digits(raw)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y)),
                                         batch_size=32)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    result = lt.find_lr(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.CrossEntropyLoss(), loader,
                        num_iter=30, verify=False, progress=False)
    said = [w for w in result.details["warnings"] if w.startswith(NOT_STANDARDISED)]
    assert len(said) == (1 if raw else 0)
    assert (NOT_STANDARDISED in result.summary()) == raw


@pytest.mark.parametrize("raw", [False, True])
def test_keras_find_lr(raw):
    keras = pytest.importorskip("keras")
    from lrkit.keras import find_lr

    x, y = _digits(raw)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    result = find_lr(model, x, y, batch_size=32, num_iter=30, verify=False, progress=False)
    assert any(w.startswith(NOT_STANDARDISED) for w in result.details["warnings"]) == raw


@pytest.mark.parametrize("raw", [False, True])
def test_optax_find_lr(raw):
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    from lrkit.integrations.jax.trainer import find_lr_optax

    x, y = _digits(raw)
    batches = [(x[i:i + 32], y[i:i + 32].astype(np.int32)) for i in range(0, 1024, 32)]

    def loss(params, batch):
        xb, yb = batch
        return optax.softmax_cross_entropy_with_integer_labels(xb @ params["w"] + params["b"], yb).mean()

    params = {"w": jax.numpy.zeros((64, 10)), "b": jax.numpy.zeros(10)}
    result = find_lr_optax(loss, params, optax.sgd, batches, num_iter=30, verify=False, progress=False)
    assert any(w.startswith(NOT_STANDARDISED) for w in result.details["warnings"]) == raw


def test_the_autopilots_plan_says_so_before_training():
    torch = pytest.importorskip("torch")
    import lrkit.torch as lt

    x, y = _digits(raw=True)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y)),
                                         batch_size=32, shuffle=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    pilot = lt.autopilot(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.CrossEntropyLoss(), loader,
                         train_steps=200)
    assert any(r.startswith("inputs: " + NOT_STANDARDISED) for r in pilot.plan.reasons)
    assert NOT_STANDARDISED in pilot.plan.summary()
