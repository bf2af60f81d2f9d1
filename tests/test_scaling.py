"""Rules of thumb: families, defaults, ranges and batch-size scaling."""
import doctest
import math

import pytest
from hypothesis import given, strategies as st

import lrkit.scaling as scaling
from lrkit.scaling import (
    FAMILIES,
    default_lr,
    lr_range,
    optimizer_family,
    scale_lr,
    scaling_rule,
    warmup_steps_for,
)


def test_docstring_examples_run():
    failures, tried = doctest.testmod(scaling)
    assert tried > 5 and failures == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_a_default_inside_its_range(family):
    lo, hi = lr_range(family)
    assert 0 < lo < default_lr(family) < hi


def test_torch_optimizers_are_recognised():
    torch = pytest.importorskip("torch")
    params = [torch.nn.Parameter(torch.zeros(2))]
    cases = {
        torch.optim.SGD(params, lr=0.1): "sgd",
        torch.optim.SGD(params, lr=0.1, momentum=0.9): "sgd_momentum",
        torch.optim.Adam(params): "adam",
        torch.optim.AdamW(params): "adamw",
        torch.optim.NAdam(params): "adam",
        torch.optim.RMSprop(params): "rmsprop",
        torch.optim.Adagrad(params): "adagrad",
        torch.optim.Adadelta(params): "adadelta",
        torch.optim.LBFGS(params): "unknown",
    }
    for opt, family in cases.items():
        assert optimizer_family(opt) == family, type(opt).__name__
    assert default_lr(torch.optim.Adam(params)) == 1e-3


def test_prodigy_is_learning_rate_free():
    torch = pytest.importorskip("torch")
    prodigyopt = pytest.importorskip("prodigyopt")
    opt = prodigyopt.Prodigy([torch.nn.Parameter(torch.zeros(2))])
    assert optimizer_family(opt) == "lr_free"
    assert scale_lr(1.0, 32, 512, family=opt) == 1.0


def test_keras_optimizers_are_recognised():
    keras = pytest.importorskip("keras")
    assert optimizer_family(keras.optimizers.SGD(0.1, momentum=0.9)) == "sgd_momentum"
    assert optimizer_family(keras.optimizers.SGD(0.1)) == "sgd"
    assert optimizer_family(keras.optimizers.AdamW()) == "adamw"
    assert optimizer_family(keras.optimizers.RMSprop()) == "rmsprop"
    if hasattr(keras.optimizers, "ScheduleFreeAdamW"):  # Keras >= 3.12
        sf = keras.optimizers.ScheduleFreeAdamW()
        assert optimizer_family(sf) == "adamw"
        lo, hi = lr_range(sf)
        assert lo < float(sf.learning_rate) < hi  # Keras' own default lies in the family's range


def test_family_names_and_class_names():
    assert optimizer_family("Adam") == "adam"
    assert optimizer_family("DAdaptAdam") == "lr_free"
    # Schedule-Free removes the schedule, not the LR: AdamW's scale for AdamW; SGD's wants ~1.0
    assert optimizer_family("AdamWScheduleFree") == "adamw"
    assert optimizer_family("SGDScheduleFree") == "lr_free" and default_lr("SGDScheduleFree") == 1.0
    assert optimizer_family("something-else") == "unknown"
    with pytest.raises(ValueError, match="optimizer"):
        optimizer_family(None)


def test_auto_rule_follows_the_family():
    assert scaling_rule("sgd_momentum") == "linear"
    assert scaling_rule("adamw") == "sqrt"
    assert scaling_rule("lr_free") == "none"
    assert scale_lr(0.1, 128, 512, family="sgd") == pytest.approx(0.4)
    assert scale_lr(1e-3, 128, 512, family="adam") == pytest.approx(2e-3)


@given(
    lr=st.floats(1e-8, 10.0),
    b0=st.integers(1, 4096),
    b1=st.integers(1, 4096),
    rule=st.sampled_from(["linear", "sqrt", "none"]),
)
def test_scaling_round_trips_and_is_monotone(lr, b0, b1, rule):
    up = scale_lr(lr, b0, b1, rule=rule)
    assert math.isfinite(up) and up > 0
    assert scale_lr(up, b1, b0, rule=rule) == pytest.approx(lr, rel=1e-9)
    if rule != "none" and b1 > b0:
        assert up > lr
    if rule == "linear":
        assert up == pytest.approx(lr * b1 / b0, rel=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=-1.0, from_batch_size=1, to_batch_size=2), "lr must be a finite number > 0"),
        (dict(lr=float("nan"), from_batch_size=1, to_batch_size=2), "lr must be"),
        (dict(lr=0.1, from_batch_size=0, to_batch_size=2), "from_batch_size must be an integer >= 1"),
        (dict(lr=0.1, from_batch_size=1, to_batch_size=2.5), "to_batch_size must be an integer >= 1"),
        (dict(lr=0.1, from_batch_size=1, to_batch_size=2, rule="cubic"), "rule must be one of"),
    ],
)
def test_bad_input_names_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        scale_lr(**kwargs)


@given(b0=st.integers(1, 1024), k=st.integers(1, 64), spe=st.integers(1, 1000))
def test_warmup_only_when_the_batch_grows_enough(b0, k, spe):
    steps = warmup_steps_for(b0, b0 * k, steps_per_epoch=spe)
    assert steps == (0 if k < 2 else 5 * spe)
    assert warmup_steps_for(b0 * k, b0, steps_per_epoch=spe) == 0


def test_warmup_bad_input():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        warmup_steps_for(1, 8, steps_per_epoch=0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        warmup_steps_for(1, 8, steps_per_epoch=10, warmup_epochs=-1)


def test_factory_functions_are_recognised_by_name():
    import functools

    def sgd(learning_rate, momentum=None):  # the shape of optax.sgd, no optax needed
        return None

    def nadamw(learning_rate):
        return None

    assert optimizer_family(sgd) == "sgd"
    assert optimizer_family(functools.partial(sgd, momentum=0.9)) == "sgd_momentum"
    assert optimizer_family(functools.partial(functools.partial(sgd, momentum=0.0))) == "sgd"
    assert optimizer_family(nadamw) == "adamw"
    assert optimizer_family(lambda lr: None) == "unknown"
    assert optimizer_family("noisy_sgd") == "sgd" and optimizer_family("amsgrad") == "adam"


def test_optax_factories_are_recognised():
    optax = pytest.importorskip("optax")
    import functools

    cases = {
        optax.sgd: "sgd",
        functools.partial(optax.sgd, momentum=0.9): "sgd_momentum",
        optax.adam: "adam",
        optax.adamw: "adamw",
        optax.nadamw: "adamw",
        optax.rmsprop: "rmsprop",
        optax.adagrad: "adagrad",
        optax.lion: "lion",
        optax.inject_hyperparams(optax.adam): "adam",  # functools.wraps keeps the name
        optax.scale_by_adam: "unknown",  # a building block, not an optimizer with an LR
    }
    for factory, family in cases.items():
        assert optimizer_family(factory) == family, factory
    assert lr_range(optax.adam) == (1e-7, 1.0)
