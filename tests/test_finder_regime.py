"""The many-epoch regime (lrkit.finder.regime): the run's shape, the rule, and what the finder does with it."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrkit.finder.regime import (ACCUMULATING, FITS_EVERY_EXAMPLE, MANY_EPOCHS, MANY_EPOCHS_FACTOR, MAX_EXAMPLES,
                                 many_epochs, run_shape)
from lrkit.finder.suggest import suggest
from tests.test_suggest import Quadratic, quad_curve


def test_run_shape_divides_and_leaves_unknowns_unknown():
    assert run_shape(train_steps=600, steps_per_epoch=20, examples=640, parameters=1280) == {
        "epochs": 30.0, "params_per_example": 2.0, "examples": 640.0}
    assert run_shape(train_steps=None, steps_per_epoch=20, examples=640, parameters=1280) == {
        "epochs": None, "params_per_example": 2.0, "examples": 640.0}
    assert run_shape(train_steps=600, steps_per_epoch=None, examples=None, parameters=1280) == {
        "epochs": None, "params_per_example": None, "examples": None}


@given(epochs=st.floats(0.01, 1e4), ppe=st.floats(1e-3, 1e4), examples=st.floats(1, 1e6),
       family=st.sampled_from(["sgd", "sgd_momentum", "adam", "adamw", "rmsprop", "adagrad", "adadelta", "unknown"]))
def test_the_regime_is_many_passes_over_a_small_set_a_model_can_fit_and_no_accumulating_optimizer(
        epochs, ppe, examples, family):
    expected = (epochs >= MANY_EPOCHS and ppe >= FITS_EVERY_EXAMPLE and examples <= MAX_EXAMPLES
                and family not in ACCUMULATING)
    assert many_epochs(epochs, ppe, family, examples) is expected
    assert not many_epochs(None, ppe, family, examples) and not many_epochs(epochs, None, family, examples)
    assert not many_epochs(epochs, ppe, family, None)


def test_a_verified_answer_in_the_regime_is_divided_and_says_why():
    lrs, losses = quad_curve()
    plain = suggest(lrs, losses, trainer=Quadratic(), family="sgd", verify_steps=8)
    short = suggest(lrs, losses, trainer=Quadratic(), family="sgd", verify_steps=8, epochs=10.0, params_per_example=50.0,
                    examples=200)
    many = suggest(lrs, losses, trainer=Quadratic(), family="sgd", verify_steps=8, epochs=40.0, params_per_example=50.0,
                   examples=200)
    large = suggest(lrs, losses, trainer=Quadratic(), family="sgd", verify_steps=8, epochs=200.0,
                    params_per_example=220.0, examples=50_000)  # an augmented image set: nothing measured there
    assert plain.method == short.method == many.method == "verified"
    assert short.lr == plain.lr and not any("passes" in w for w in short.details["warnings"])
    assert large.lr == plain.lr and large.details["run_shape"]["many_epochs"] is False
    assert many.details["short_run_optimum"] == plain.details["short_run_optimum"]  # the same candidates
    assert many.lr == pytest.approx(plain.lr / MANY_EPOCHS_FACTOR)
    assert many.band[0] <= many.lr <= many.band[1] and many.band[1] < plain.band[1]
    assert many.details["run_shape"] == {"epochs": 40.0, "params_per_example": 50.0, "examples": 200.0,
                                         "many_epochs": True}
    assert many.details["many_epochs_factor"] == MANY_EPOCHS_FACTOR
    said = [w for w in many.details["warnings"] if "40 passes over its 200 training examples" in w]
    assert len(said) == 1 and "divided by a further 5" in said[0] and "autopilot" in said[0]
    assert "run_shape" not in plain.details


def test_the_passes_follow_the_real_runs_batch_size():
    lrs, losses = quad_curve()
    # 20 passes counted with the range test's batch of 32 are 40 with the real run's 64
    s = suggest(lrs, losses, trainer=Quadratic(), family="sgd", verify_steps=8, epochs=20.0, params_per_example=5.0,
                examples=300, batch_size=32, target_batch_size=64)
    assert s.details["run_shape"]["epochs"] == 40.0 and s.details["run_shape"]["many_epochs"] is True


def test_an_adagrad_run_and_a_model_smaller_than_its_data_are_left_alone():
    lrs, losses = quad_curve()
    plain = suggest(lrs, losses, trainer=Quadratic(), family="adagrad", verify_steps=8)
    ada = suggest(lrs, losses, trainer=Quadratic(), family="adagrad", verify_steps=8, epochs=60.0,
                  params_per_example=4.0, examples=130)
    small = suggest(lrs, losses, trainer=Quadratic(), family="sgd", verify_steps=8, epochs=60.0,
                    params_per_example=0.1, examples=130)
    assert ada.lr == plain.lr and ada.details["run_shape"]["many_epochs"] is False
    assert small.lr == suggest(lrs, losses, trainer=Quadratic(), family="sgd", verify_steps=8).lr


def test_an_unverified_answer_in_the_regime_is_kept_but_flagged():
    lrs, losses = quad_curve()
    rule = suggest(lrs, losses, family="sgd")
    flagged = suggest(lrs, losses, family="sgd", epochs=100.0, params_per_example=3.0, examples=50)
    assert flagged.lr == rule.lr and flagged.method == "rule"
    assert any("not verified" in w and "100 passes" in w for w in flagged.details["warnings"])


@pytest.mark.parametrize("name,value", [("epochs", -1.0), ("epochs", math.nan), ("params_per_example", 0),
                                        ("params_per_example", "many"), ("epochs", True), ("examples", -5)])
def test_a_bad_shape_is_refused_by_name(name, value):
    lrs, losses = quad_curve()
    with pytest.raises(ValueError, match=f"{name} must be a finite number > 0 or None"):
        suggest(lrs, losses, family="sgd", **{name: value})


# ------------------------------------------------------------------------------- the adapters
torch = pytest.importorskip("torch")


def _small_data_mlp(n=64, batch=8, seed=0):
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, opt, DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, generator=g)


def test_torch_find_lr_reads_the_shape_from_its_loader_and_acts_on_it():
    import lrkit.torch as lt

    model, opt, loader = _small_data_mlp()  # 64 examples, 8 batches of 8, 226 parameters
    res = lt.find_lr(model, opt, torch.nn.CrossEntropyLoss(), loader, train_steps=240, progress=False)
    shape = res.details["run_shape"]
    assert shape["epochs"] == pytest.approx(240 / 8) and shape["params_per_example"] == pytest.approx(226 / 64)
    assert shape["many_epochs"] is True
    if res.method == "verified":
        assert res.details["many_epochs_factor"] == MANY_EPOCHS_FACTOR
        assert res.suggestion == pytest.approx(max(res.details["short_run_optimum"] / (2 * MANY_EPOCHS_FACTOR),
                                                   res.lrs[0]))
    assert any("30 passes" in w for w in res.details["warnings"])
    assert "run: 30 passes over the training set, 3.53 trainable parameters per example" in res.summary()
    # gradient accumulation: four batches per optimizer step make a quarter of the passes
    model, opt, loader = _small_data_mlp()
    acc = lt.find_lr(model, opt, torch.nn.CrossEntropyLoss(), loader, train_steps=240, accumulation_steps=4,
                     progress=False, verify=False)
    assert acc.details["run_shape"]["epochs"] == pytest.approx(240 * 4 / 8)


def test_many_epochs_false_leaves_the_answer_undivided_and_a_bad_value_is_refused():
    import lrkit.torch as lt

    model, opt, loader = _small_data_mlp()
    off = lt.find_lr(model, opt, torch.nn.CrossEntropyLoss(), loader, train_steps=240, progress=False,
                     many_epochs=False)
    model, opt, loader = _small_data_mlp()
    on = lt.find_lr(model, opt, torch.nn.CrossEntropyLoss(), loader, train_steps=240, progress=False)
    assert "run_shape" not in off.details and "many_epochs_factor" not in off.details
    assert not any("passes" in w for w in off.details["warnings"])
    if on.method == off.method == "verified":  # the same candidates, one division apart
        assert on.details["short_run_optimum"] == off.details["short_run_optimum"]
        assert on.suggestion == pytest.approx(off.suggestion / MANY_EPOCHS_FACTOR)
    model, opt, loader = _small_data_mlp()
    with pytest.raises(ValueError, match="many_epochs must be True or False"):
        lt.find_lr(model, opt, torch.nn.CrossEntropyLoss(), loader, train_steps=240, progress=False,
                   many_epochs="no")


def test_torch_find_lr_without_a_length_or_train_steps_knows_no_regime():
    from torch.utils.data import DataLoader, IterableDataset

    import lrkit.torch as lt

    class Stream(IterableDataset):
        def __iter__(self):
            g = torch.Generator().manual_seed(0)
            for _ in range(10_000):
                x = torch.randn(4, generator=g)
                yield x, (x[0] > 0).long()

    model, opt, _ = _small_data_mlp()
    res = lt.find_lr(model, opt, torch.nn.CrossEntropyLoss(), DataLoader(Stream(), batch_size=8), train_steps=240,
                     progress=False)
    assert "run_shape" not in res.details and res.method == "verified"  # a stream: nothing known, nothing said
    model, opt, loader = _small_data_mlp()
    res = lt.find_lr(model, opt, torch.nn.CrossEntropyLoss(), loader, num_iter=30, progress=False, verify=False)
    assert res.details["run_shape"] == {"epochs": None, "params_per_example": pytest.approx(226 / 64),
                                        "examples": 64.0, "many_epochs": False}
    assert not any("passes" in w for w in res.details["warnings"])


def test_keras_and_optax_trainers_report_their_data_shape():
    keras = pytest.importorskip("keras")
    from lrkit.integrations.keras.trainer import KerasTrainer

    x = np.zeros((100, 3), "float32")
    y = np.zeros((100, 1), "float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    shape = KerasTrainer(model, x, y, batch_size=10).data_shape()
    assert shape == {"steps_per_epoch": 10.0, "examples": 100, "parameters": 3 * 5 + 5 + 5 + 1}

    jnp = pytest.importorskip("jax.numpy")
    optax = pytest.importorskip("optax")
    from lrkit.integrations.jax.trainer import OptaxTrainer

    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    batches = [(np.zeros((16, 3), "float32"), np.zeros((16, 2), "float32"))] * 5

    def loss_fn(p, batch):
        xb, yb = batch
        return jnp.mean((xb @ p["w"] + p["b"] - yb) ** 2)

    shape = OptaxTrainer(loss_fn, params, optax.sgd, batches).data_shape()
    assert shape == {"steps_per_epoch": 5, "examples": 80, "parameters": 8}
    gen = OptaxTrainer(loss_fn, params, optax.sgd, (b for b in batches)).data_shape()
    assert gen["steps_per_epoch"] is None and gen["examples"] is None


@settings(deadline=None)  # the first example builds torch's first DataLoader
@given(n=st.integers(1, 400), batch=st.integers(1, 64), drop_last=st.booleans(), accumulation=st.integers(1, 4),
       train_steps=st.integers(1, 10_000))
def test_a_torch_loaders_passes_are_its_optimizer_steps_per_epoch(n, batch, drop_last, accumulation, train_steps):
    from torch.utils.data import DataLoader, TensorDataset

    from lrkit.integrations.torch.trainer import TorchTrainer

    model = torch.nn.Linear(3, 1)
    loader = DataLoader(TensorDataset(torch.zeros(n, 3), torch.zeros(n, 1)), batch_size=batch, drop_last=drop_last)
    trainer = TorchTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.MSELoss(), loader,
                           accumulation_steps=accumulation) if len(loader) else None
    if trainer is None:  # drop_last with fewer examples than a batch: an empty loader is refused elsewhere
        return
    batches = n // batch if drop_last else -(-n // batch)
    shape = trainer.data_shape()
    assert shape == {"steps_per_epoch": batches / accumulation, "examples": n, "parameters": 4}
    run = run_shape(train_steps=train_steps, **shape)
    assert run["epochs"] == pytest.approx(train_steps * accumulation / batches)
    assert run["params_per_example"] == pytest.approx(4 / n)
