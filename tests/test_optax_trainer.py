"""OptaxTrainer / find_lr_optax: a real digits task, one compilation, bitwise restore, the LR slot, bad input."""
from __future__ import annotations

import doctest
import functools
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = jax.numpy

from lrkit import scaling  # noqa: E402
from lrkit.finder.range_test import find  # noqa: E402
from lrkit.integrations import _progress  # noqa: E402
from lrkit.integrations.jax import trainer as optax_trainer  # noqa: E402
from lrkit.integrations.jax.inject import lr_slots  # noqa: E402
from lrkit.integrations.jax.trainer import OptaxTrainer, find_lr_optax  # noqa: E402

pytestmark = pytest.mark.jax
FAST = settings(max_examples=15, deadline=None)


# -- a bitwise picture of a pytree ---------------------------------------------------------------
def bits(tree):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return str(treedef), [(str(np.asarray(x).dtype), np.shape(x), np.asarray(x).tobytes()) for x in leaves]


def same_objects(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(x is y for x, y in zip(la, lb))


def rng_picture():
    state = np.random.get_state()
    return (state[0], state[1].tobytes(), *state[2:]), random.getstate()


# -- the digits task in pure jax.numpy ------------------------------------------------------------
def mlp_loss(params, batch):
    """Cross-entropy of a 64-32-10 ReLU MLP (module level: one compilation shared by the tests)."""
    x, y = batch
    h = jax.nn.relu(x @ params["w1"] + params["b1"])
    return optax.softmax_cross_entropy_with_integer_labels(h @ params["w2"] + params["b2"], y).mean()


def init_mlp(seed=0, hidden=32):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {"w1": jax.random.normal(k1, (64, hidden)) / 8.0, "b1": jnp.zeros(hidden),
            "w2": jax.random.normal(k2, (hidden, 10)) / math.sqrt(hidden), "b2": jnp.zeros(10)}


@pytest.fixture(scope="module")
def digits():
    """Standardised digits: 22 training batches of 64 and 3 validation batches of 120."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    x, y = sklearn_datasets.load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm].astype(np.float32), y[perm].astype(np.int32)
    mu, sd = x[360:].mean(0), x[360:].std(0)
    sd[sd == 0] = 1.0
    x = (x - mu) / sd
    xtr, ytr, xva, yva = x[360:], y[360:], x[:360], y[:360]
    train = [(xtr[i:i + 64], ytr[i:i + 64]) for i in range(0, len(xtr) - 63, 64)]
    val = [(xva[i:i + 120], yva[i:i + 120]) for i in range(0, 360, 120)]
    return train, val


@pytest.fixture(scope="module")
def warm_adam(digits):
    """A user's Adam mid-training: the injected transformation and the state after 5 real steps."""
    train, _ = digits
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=3e-3)
    params = init_mlp(1)
    state = tx.init(params)

    @jax.jit
    def user_step(params, state, batch):
        updates, state = tx.update(jax.grad(mlp_loss)(params, batch), state, params)
        return optax.apply_updates(params, updates), state

    for batch in train[:5]:
        params, state = user_step(params, state, batch)
    return tx, params, state


def test_docstring_examples_run():
    for module in (optax_trainer, _progress):
        res = doctest.testmod(module)
        assert res.attempted > 0 and res.failed == 0, module.__name__


# -- the real task -------------------------------------------------------------------------------
@pytest.mark.parametrize(("factory", "family", "sane"), [
    (optax.adam, "adam", (1e-4, 1e-1)),
    (optax.sgd, "sgd", (1e-2, 3.0)),
])
def test_digits_suggestion_is_sane_and_trains(digits, factory, family, sane):
    train, val = digits
    params = init_mlp()
    before = bits(params)
    res = find_lr_optax(mlp_loss, params, factory, train, val_batches=val, progress=False)
    assert res.details["family"] == family and res.batch_size == 64
    assert res.lrs[0] == scaling.lr_range(family)[0]  # the family's default range
    assert sane[0] < res.suggestion < sane[1], res.summary()
    assert res.band[0] <= res.suggestion <= res.band[1]
    assert bits(params) == before

    trainer = OptaxTrainer(mlp_loss, params, factory, train, val_batches=val)
    start = trainer.snapshot()
    val_loss = {}
    for lr in (res.suggestion, 1e-6):
        for _ in range(200):
            trainer.step(lr)
        val_loss[lr] = trainer.evaluate()
        trainer.restore(start)
    assert val_loss[res.suggestion] < 0.3 < 2.0 < val_loss[1e-6], val_loss
    assert same_objects(trainer.params, params) and bits(trainer.params) == before


# -- one compilation -----------------------------------------------------------------------------
def counting_loss():
    traces = {"n": 0}

    def loss(params, batch):
        traces["n"] += 1  # a Python side effect: runs once per trace, never per call
        x, y = batch
        return jnp.mean((x @ params["w"] - y) ** 2)

    return loss, traces


def regression_batches(n_batches=5, size=16, d=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_batches * size, d)).astype(np.float32)
    y = x @ np.arange(1, d + 1, dtype=np.float32)
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


@pytest.mark.parametrize("form", ["factory", "injected"])
def test_a_50_step_range_test_compiles_the_step_once(form):
    loss, traces = counting_loss()
    opt = optax.adam if form == "factory" else optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    params = {"w": jnp.zeros(4)}
    steps = []
    res = find_lr_optax(loss, params, opt, regression_batches(), start_lr=1e-4, end_lr=1e-1, num_iter=50,
                        progress=lambda i, lr, l: steps.append(lr), verify=False)
    assert len(steps) == len(res.lrs) == 50 and steps == res.lrs.tolist()
    assert traces["n"] == 1
    # the same loss and optimizer again (with verification runs this time): the compiled step is reused,
    # and the loss alone is compiled once more for the verification's scores (no validation batches:
    # the fixed sample of training batches, sample_loss)
    for seed in (1, 2):
        find_lr_optax(loss, params, opt, regression_batches(seed=seed), start_lr=1e-4, end_lr=1e-1, num_iter=50,
                      progress=False, verify_steps=10)
        assert traces["n"] == 2


def test_an_unhashable_loss_is_compiled_without_the_cache():
    class Loss:
        __hash__ = None  # e.g. a dataclass with eq=True

        def __init__(self):
            self.traces = 0

        def __call__(self, params, batch):
            self.traces += 1
            x, y = batch
            return jnp.mean((x @ params["w"] - y) ** 2)

    loss = Loss()
    res = find_lr_optax(loss, {"w": jnp.zeros(4)}, optax.sgd, regression_batches(), start_lr=1e-4, end_lr=1.0,
                        num_iter=30, progress=False, verify=False)
    assert len(res.lrs) >= 20 and loss.traces == 1


# -- the learning rate reaches the optimizer -------------------------------------------------------
def linear_loss(params, batch):
    """Gradient ``batch`` for every leaf: an SGD step moves each leaf by exactly ``-lr * batch``."""
    return sum(jnp.sum(leaf * batch) for leaf in jax.tree_util.tree_leaves(params))


@pytest.fixture(scope="module")
def grouped_sgd():
    """Two parameter groups with injected LRs 0.1 and 0.01 (ratio 0.1), like torch param groups."""
    tx = optax.multi_transform(
        {"a": optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
         "b": optax.inject_hyperparams(optax.sgd)(learning_rate=0.01)},
        {"a": "a", "b": "b"},
    )
    params = {"a": jnp.zeros(3), "b": jnp.zeros(3)}
    c = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    return OptaxTrainer(linear_loss, params, tx, [c]), c


@FAST
@given(lr=st.floats(1e-6, 10.0))
def test_each_step_uses_the_requested_lr_and_keeps_group_ratios(grouped_sgd, lr):
    trainer, c = grouped_sgd
    start = trainer.snapshot()
    trainer.step(lr)
    moved_a, moved_b = np.asarray(trainer.params["a"]), np.asarray(trainer.params["b"])
    slots = [s.hyperparams["learning_rate"] for s in lr_slots(trainer.opt_state)]
    trainer.restore(start)
    lr32 = np.float32(lr)
    np.testing.assert_array_equal(moved_a, -(lr32 * c))
    np.testing.assert_allclose(moved_b, -(lr32 * np.float32(0.1)) * c, rtol=1e-6)
    assert float(slots[0]) == float(lr32)
    assert float(slots[1]) == pytest.approx(lr * 0.1, rel=1e-6)
    assert bits(trainer.params) == bits({"a": jnp.zeros(3), "b": jnp.zeros(3)})


# -- bitwise restore -----------------------------------------------------------------------------
class Boom(Exception):
    pass


def augmented(train, fail_at=None, exc=None):
    """A one-shot generator that draws augmentation noise from the NumPy and Python RNGs."""
    for i, (x, y) in enumerate(train):
        if i == fail_at:
            raise exc
        noise = np.random.normal(0.0, 0.01, size=x.shape).astype(np.float32) * random.random()
        yield x + noise, y


def check_restored(trainer, params, state, rngs):
    assert same_objects(trainer.params, params) and same_objects(trainer.opt_state, state)
    assert bits(trainer.params) == bits(params) and bits(trainer.opt_state) == bits(state)
    assert rng_picture() == rngs


@pytest.mark.parametrize("end_lr", [1e-2, 1e3], ids=["normal_end", "diverges"])
def test_bitwise_restore_after_the_test(digits, warm_adam, end_lr):
    train, _ = digits
    tx, params, state = warm_adam
    before = (bits(params), bits(state))
    np.random.seed(5)
    random.seed(6)
    trainer = OptaxTrainer(mlp_loss, params, tx, augmented(train), opt_state=state)
    rngs = rng_picture()
    res = find(trainer, start_lr=1e-5, end_lr=end_lr, num_iter=40)
    assert res.stopped_early == (end_lr > 1)
    check_restored(trainer, params, state, rngs)
    assert (bits(params), bits(state)) == before and not any(x.is_deleted() for x in jax.tree_util.tree_leaves(params))
    # restored position: the same batches again, so the same losses
    again = find(trainer, start_lr=1e-5, end_lr=end_lr, num_iter=40)
    np.testing.assert_array_equal(again.losses, res.losses)


@pytest.mark.parametrize("exc", [Boom("data pipeline broke"), KeyboardInterrupt()], ids=["exception", "ctrl_c"])
def test_bitwise_restore_when_the_batches_raise_at_batch_10(digits, warm_adam, exc):
    train, _ = digits
    tx, params, state = warm_adam
    np.random.seed(7)
    trainer = OptaxTrainer(mlp_loss, params, tx, augmented(train, fail_at=10, exc=exc), opt_state=state)
    rngs = rng_picture()
    progress = []
    with pytest.raises(type(exc)):
        find(trainer, start_lr=1e-5, end_lr=1.0, num_iter=40, progress=lambda i, lr, loss: progress.append(i))
    assert progress == list(range(10))  # ten steps ran, the eleventh batch raised
    check_restored(trainer, params, state, rngs)
    # the ten batches read are kept; asking for more names the earlier failure instead of cycling quietly
    losses = [trainer.step(1e-3) for _ in range(10)]
    assert all(math.isfinite(v) for v in losses)
    with pytest.raises(RuntimeError, match=r"batches raised (Boom|KeyboardInterrupt) earlier \(after 10 batches\)"):
        trainer.step(1e-3)


def test_restore_after_nan_at_the_first_step_names_start_lr(digits):
    train, _ = digits
    params = init_mlp()

    def nan_loss(p, batch):
        return mlp_loss(p, batch) * jnp.nan

    trainer = OptaxTrainer(nan_loss, params, optax.adam, train)
    state = trainer.opt_state
    rngs = rng_picture()
    with pytest.raises(ValueError, match="loss is not finite at the first step.*lower start_lr"):
        find(trainer, start_lr=1e-5, end_lr=1.0, num_iter=20)
    check_restored(trainer, params, state, rngs)
    with pytest.raises(ValueError, match="loss is not finite at the first step"):
        find_lr_optax(nan_loss, params, optax.adam, train, progress=False)


# -- batches -------------------------------------------------------------------------------------
def first_feature_loss(params, batch):
    return jnp.sum(params["w"] * 0.0) + batch[0, 0]  # the loss *is* the batch's first entry


@pytest.fixture(scope="module")
def tagged_batches():
    return [np.full((2, 2), float(k), dtype=np.float32) for k in range(3)]


@pytest.mark.parametrize("kind", ["list", "tuple", "generator", "reiterable"])
def test_batches_are_cycled_and_iterators_read_lazily(tagged_batches, kind):
    reads = []

    def gen():
        for b in tagged_batches:
            reads.append(float(b[0, 0]))
            yield b

    class Reiterable:
        def __iter__(self):
            return gen()

    source = {"list": list(tagged_batches), "tuple": tuple(tagged_batches), "generator": gen(),
              "reiterable": Reiterable()}[kind]
    trainer = OptaxTrainer(first_feature_loss, {"w": jnp.zeros(1)}, optax.sgd, source)
    assert reads == []  # nothing is read before the first step
    first = [trainer.step(1e-3) for _ in range(2)]
    assert first == [0.0, 1.0]
    if kind in ("generator", "reiterable"):
        assert reads == [0.0, 1.0]  # lazily: one batch per step
    rest = [trainer.step(1e-3) for _ in range(5)]
    assert first + rest == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0]
    if kind in ("generator", "reiterable"):
        assert reads == [0.0, 1.0, 2.0]  # read once, then replayed from memory


@FAST
@given(before=st.integers(0, 7), during=st.integers(1, 9), kind=st.sampled_from(["list", "generator"]))
def test_restore_puts_the_data_position_back(tagged_batches, before, during, kind):
    source = list(tagged_batches) if kind == "list" else iter(tagged_batches)
    trainer = OptaxTrainer(first_feature_loss, {"w": jnp.zeros(1)}, optax.sgd, source)
    for _ in range(before):
        trainer.step(1e-3)
    state = trainer.snapshot()
    a = [trainer.step(1e-3) for _ in range(during)]
    trainer.restore(state)
    b = [trainer.step(1e-3) for _ in range(during)]
    assert a == b == [float((before + i) % 3) for i in range(during)]


def test_evaluate_is_the_mean_over_at_most_max_val_batches(digits):
    train, val = digits
    params = init_mlp()
    direct = [float(mlp_loss(params, b)) for b in val]
    t = OptaxTrainer(mlp_loss, params, optax.sgd, train, val_batches=iter(val))
    assert t.evaluate() == pytest.approx(np.mean(direct), rel=1e-6)
    assert t.evaluate() == pytest.approx(np.mean(direct), rel=1e-6)  # a one-shot iterator is kept
    t2 = OptaxTrainer(mlp_loss, params, optax.sgd, train, val_batches=val, max_val_batches=2)
    assert t2.evaluate() == pytest.approx(np.mean(direct[:2]), rel=1e-6)
    assert OptaxTrainer(mlp_loss, params, optax.sgd, train).evaluate() is None


def test_numpy_params_are_left_untouched(digits):
    train, _ = digits
    params = {k: np.array(v) for k, v in init_mlp().items()}
    before = bits(params)
    res = find_lr_optax(mlp_loss, params, optax.adam, train, num_iter=30, progress=False, verify=False)
    assert len(res.lrs) >= 10 and bits(params) == before


# -- has_aux, optimizer forms, family ------------------------------------------------------------
def test_has_aux_loss(digits):
    train, _ = digits
    params = init_mlp()

    def with_aux(p, batch):
        return mlp_loss(p, batch), {"n": batch[0].shape[0]}

    a = find_lr_optax(with_aux, params, optax.adam, train, has_aux=True, num_iter=30, progress=False, verify=False)
    b = find_lr_optax(mlp_loss, params, optax.adam, train, num_iter=30, progress=False, verify=False)
    np.testing.assert_array_equal(a.losses, b.losses)
    with pytest.raises(ValueError, match="pass has_aux=True if it returns \\(loss, aux\\)"):
        find_lr_optax(with_aux, params, optax.adam, train, num_iter=10, progress=False, verify=False)
    with pytest.raises(ValueError, match="with has_aux=True, loss_fn\\(params, batch\\) must return \\(loss, aux\\)"):
        find_lr_optax(mlp_loss, params, optax.adam, train, has_aux=True, num_iter=10, progress=False, verify=False)


@pytest.mark.parametrize(("optimizer", "family"), [
    (optax.adamw, "adamw"),
    (optax.rmsprop, "rmsprop"),
    (optax.adagrad, "adagrad"),
    (functools.partial(optax.sgd, momentum=0.9), "sgd_momentum"),
    (optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9), "sgd_momentum"),
    (optax.inject_hyperparams(optax.adam)(learning_rate=1e-3), "adam"),
    (optax.inject_hyperparams(optax.adam), "adam"),  # a factory that injects its own LR: not wrapped twice
    (lambda lr: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr)), "unknown"),
    (optax.chain(optax.clip_by_global_norm(1.0), optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)), "unknown"),
])
def test_optimizer_forms_and_inferred_family(optimizer, family):
    trainer = OptaxTrainer(linear_loss, {"w": jnp.zeros(3)}, optimizer, [np.ones(3, np.float32)])
    assert trainer.family == family
    assert len(lr_slots(trainer.opt_state)) == 1
    state = trainer.snapshot()
    trainer.step(0.5)
    assert float(lr_slots(trainer.opt_state)[0].hyperparams["learning_rate"]) == 0.5
    assert np.all(np.asarray(trainer.params["w"]) < 0)  # the step moved against the gradient
    trainer.restore(state)


def test_unknown_family_gets_the_generic_range_and_family_overrides():
    batches = regression_batches()
    loss, _ = counting_loss()
    with pytest.warns(UserWarning, match=r"family of <lambda> is unknown .*sweeps the widest range 1e-07 \.\. 10; "
                                         r"name it with family='adam'"):
        res = find_lr_optax(loss, {"w": jnp.zeros(4)}, lambda lr: optax.adam(lr), batches, num_iter=20,
                            progress=False, verify=False)
    assert res.details["family"] == "unknown" and res.lrs[0] == scaling.lr_range("unknown")[0]
    assert "name it with family='adam'" in res.summary()
    res = find_lr_optax(loss, {"w": jnp.zeros(4)}, lambda lr: optax.adam(lr), batches, num_iter=20, family="adam",
                        progress=False, verify=False)
    assert res.details["family"] == "adam" and res.lrs[0] == 1e-7 and res.lrs[-1] <= 1.0


def test_batch_size_is_read_from_the_batches_and_rescales():
    loss, _ = counting_loss()
    params = {"w": jnp.zeros(4)}
    res = find_lr_optax(loss, params, optax.sgd, regression_batches(), start_lr=1e-4, end_lr=1.0, num_iter=30,
                        progress=False, verify=False, target_batch_size=64)
    assert res.batch_size == 16 and res.method.endswith("+scaled")
    plain = find_lr_optax(loss, params, optax.sgd, regression_batches(), start_lr=1e-4, end_lr=1.0, num_iter=30,
                          progress=False, verify=False)
    assert res.suggestion == pytest.approx(plain.suggestion * 4)  # the linear rule for SGD
    with pytest.raises(ValueError, match="target_batch_size=64 needs batch_size"):
        find_lr_optax(linear_loss, params, optax.sgd, [np.float32(1.0)], num_iter=5, progress=False, verify=False,
                      target_batch_size=64)


def test_progress_bar_runs(capsys):
    loss, _ = counting_loss()
    res = find_lr_optax(loss, {"w": jnp.zeros(4)}, optax.sgd, regression_batches(), start_lr=1e-4, end_lr=1.0,
                        num_iter=10, progress=True, verify=False)
    assert len(res.lrs) >= 5 and capsys.readouterr().out == ""  # nothing on stdout


# -- bad input -----------------------------------------------------------------------------------
def scheduled_adam():
    return optax.inject_hyperparams(optax.adam)(learning_rate=optax.linear_schedule(1e-3, 0.0, 100))


BAD_TRAINER = [
    ("loss_fn", dict(loss_fn=42), TypeError, r"loss_fn must be callable"),
    ("params_empty", dict(params={}), ValueError, r"params must be a pytree with at least one array leaf"),
    ("params_int", dict(params={"w": jnp.zeros(3), "step": jnp.zeros((), jnp.int32)}), ValueError,
     r"params\['step'\] has dtype int32"),
    ("no_injected_lr", dict(optimizer_factory=optax.adam(1e-3)), ValueError,
     r"has no injectable learning rate: build it with optax.inject_hyperparams"),
    ("no_lr_at_all", dict(optimizer_factory=optax.inject_hyperparams(optax.scale_by_adam)()), ValueError,
     r"no injectable learning rate"),
    ("scheduled_lr", dict(optimizer_factory=scheduled_adam()), ValueError, r"gives learning_rate as a schedule"),
    ("nested", dict(optimizer_factory=optax.inject_hyperparams(optax.inject_hyperparams(optax.adam))(learning_rate=1e-3)),
     ValueError, r"nests inject_hyperparams inside inject_hyperparams"),
    ("zero_lr", dict(optimizer_factory=optax.inject_hyperparams(optax.sgd)(learning_rate=0.0)), ValueError,
     r"injected learning_rate must be a finite number > 0"),
    ("not_optimizer", dict(optimizer_factory="adam"), TypeError, r"optimizer_factory must be an optax GradientTransformation"),
    ("factory_returns_junk", dict(optimizer_factory=lambda lr: lr), TypeError,
     r"optimizer_factory\(lr\) must return an optax GradientTransformation \(or an optax.MultiSteps\), got float"),
    ("opt_state_with_factory", dict(opt_state=()), ValueError, r"opt_state is only used with an optax GradientTransformation"),
    ("opt_state_mismatch", dict(optimizer_factory=optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
                                opt_state=optax.inject_hyperparams(optax.adam)(learning_rate=0.1).init({"w": jnp.zeros(3)})),
     ValueError, r"opt_state does not match optimizer_factory.init\(params\)"),
    ("empty_list", dict(batches=[]), ValueError, r"batches is empty \(len\(batches\) == 0\)"),
    ("array_batches", dict(batches=np.ones((8, 3))), TypeError, r"batches must be an iterable of batches.*got an array of shape \(8, 3\)"),
    ("not_iterable", dict(batches=3), TypeError, r"batches must be an iterable of batches.*got int"),
    ("has_aux", dict(has_aux="no"), TypeError, r"has_aux must be True or False"),
    ("max_val_batches", dict(max_val_batches=0), ValueError, r"max_val_batches must be None or an integer >= 1, got 0"),
]


@pytest.mark.parametrize(("name", "override", "exc", "match"), BAD_TRAINER, ids=[b[0] for b in BAD_TRAINER])
def test_bad_trainer_arguments(name, override, exc, match):
    params = {"w": jnp.zeros(3)}
    kwargs = dict(loss_fn=linear_loss, params=params, optimizer_factory=optax.sgd, batches=[np.ones(3, np.float32)])
    kwargs.update(override)
    before = bits(kwargs["params"])
    with pytest.raises(exc, match=match):
        OptaxTrainer(kwargs.pop("loss_fn"), kwargs.pop("params"), kwargs.pop("optimizer_factory"), kwargs.pop("batches"),
                     **kwargs)
    assert bits(override.get("params", params)) == before


BAD_FIND = [
    ("start_ge_end", dict(start_lr=1.0, end_lr=1e-3), ValueError, r"start_lr must be < end_lr"),
    ("num_iter", dict(num_iter=1), ValueError, r"num_iter must be an integer >= 2, got 1"),
    ("mode", dict(mode="log"), ValueError, r"mode must be 'exp' or 'linear', got 'log'"),
    ("verify_steps", dict(verify_steps=-1), ValueError, r"verify_steps must be None or an integer >= 0, got -1"),
    ("verify_conflict", dict(verify=False, verify_steps=5), ValueError, r"verify=False contradicts verify_steps=5"),
    ("family", dict(family="Adam"), ValueError, r"family must be None \(infer it\) or one of sgd, .*; got 'Adam'"),
    ("batch_size", dict(batch_size=0), ValueError, r"batch_size must be None or an integer >= 1, got 0"),
    ("target_batch_size", dict(target_batch_size=2.5), ValueError, r"target_batch_size must be None or an integer >= 1"),
    ("progress", dict(progress="yes"), TypeError, r"progress must be True, False or a callback"),
    ("empty_generator", dict(batches=iter([])), ValueError, r"batches is empty \(it yielded no batch\)"),
    ("non_scalar_loss", dict(loss_fn=lambda p, b: p["w"] * b), ValueError,
     r"loss_fn\(params, batch\) must return a scalar loss, got an array of shape \(3,\); reduce it"),
    ("integer_loss", dict(loss_fn=lambda p, b: jnp.int32(1)), ValueError, r"must return a floating-point loss, got dtype int32"),
]


@pytest.mark.parametrize(("name", "override", "exc", "match"), BAD_FIND, ids=[b[0] for b in BAD_FIND])
def test_bad_find_arguments(name, override, exc, match):
    params = {"w": jnp.zeros(3)}
    kwargs = dict(loss_fn=linear_loss, params=params, optimizer_factory=optax.sgd, batches=[np.ones(3, np.float32)],
                  num_iter=10, progress=False, verify=False)
    kwargs.update(override)
    with pytest.raises(exc, match=match):
        find_lr_optax(kwargs.pop("loss_fn"), kwargs.pop("params"), kwargs.pop("optimizer_factory"), kwargs.pop("batches"),
                      **kwargs)
    assert bits(params) == bits({"w": jnp.zeros(3)})


def test_restore_refuses_a_foreign_state():
    trainer = OptaxTrainer(linear_loss, {"w": jnp.zeros(3)}, optax.sgd, [np.ones(3, np.float32)])
    with pytest.raises(TypeError, match="state must be an OptaxSnapshot from snapshot\\(\\), got dict"):
        trainer.restore({"params": None})


# -- a dead network (outputs_fn) ---------------------------------------------------------------------
@pytest.mark.parametrize("with_val", [True, False])
def test_outputs_fn_lets_the_finder_reject_an_lr_that_kills_the_network(with_val):
    """Unscaled wine: Adam at 0.3 leaves every input with the same output within 16 steps while its
    loss falls far below the untrained model's (54): without outputs_fn the finder cannot tell."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _wine import unscaled_wine

    from lrkit.collapse import COLLAPSED
    from lrkit.finder.search import DEAD, run_candidate

    x, y = unscaled_wine()
    rng = np.random.default_rng(0)
    params = {"w1": jnp.asarray(rng.normal(size=(13, 32)) / np.sqrt(13), dtype=jnp.float32), "b1": jnp.zeros(32),
              "w2": jnp.asarray(rng.normal(size=(32, 3)) / np.sqrt(32), dtype=jnp.float32), "b2": jnp.zeros(3)}

    def mlp(p, xb):
        return jax.nn.relu(xb @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    def loss_fn(p, b):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(mlp(p, b[0]), b[1]))

    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 128, 16)]
    val = [(x[130:], y[130:])] if with_val else None
    plain = OptaxTrainer(loss_fn, params, optax.adam, batches, val_batches=val)
    probed = OptaxTrainer(loss_fn, params, optax.adam, batches, val_batches=val, outputs_fn=lambda p, b: mlp(p, b[0]))
    assert plain.output_spread() is None and probed.output_spread() > COLLAPSED
    for t in (plain, probed):
        state = t.snapshot()
        killed = run_candidate(t, state, 0.3, 16, t.evaluate())
        fine = run_candidate(t, state, 0.01, 16, t.evaluate())
        assert fine["rejected"] is None and t._position == 0  # restored; measuring used no batch up
        assert (killed["rejected"] == DEAD) == (t is probed)
    for _ in range(5):
        probed.step(0.3)
    assert probed._position == 5 and probed.output_spread() <= COLLAPSED and probed._position == 5
    with pytest.raises(TypeError, match="outputs_fn must be None or callable"):
        OptaxTrainer(loss_fn, params, optax.adam, batches, outputs_fn="logits")


@pytest.mark.parametrize("batch_size", [400, 32])
def test_the_short_run_factor_follows_full_batch_training_with_a_zero_head(batch_size):
    """A zero-initialised linear classifier scores every batch ln 10 before it trains: the finder's
    determinism probe reads the model after a candidate run, so only full-batch training counts as
    deterministic (its short-run optimum is not halved)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = (x / 16).astype("float32")[:400], y[:400]

    def loss_fn(p, b):
        return optax.softmax_cross_entropy_with_integer_labels(b[0] @ p["w"], b[1]).mean()

    batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, 400, batch_size) if i + batch_size <= 400]
    res = find_lr_optax(loss_fn, {"w": jnp.zeros((64, 10))}, optax.sgd, batches, train_steps=300, progress=False)
    full = batch_size == 400
    assert res.details["deterministic_steps"] is full
    assert res.details["short_run_factor"] == (1.0 if full else 2.0)
    # 300 steps are 300 (full batch) or 25 passes over 400 examples of a 640-weight model: the
    # many-epoch regime (lrkit.finder.regime) divides the answer further
    assert res.details["run_shape"]["many_epochs"] is True and res.details["many_epochs_factor"] == 5.0
    factor = res.details["short_run_factor"] * res.details["many_epochs_factor"]
    assert res.suggestion == pytest.approx(res.details["short_run_optimum"] / factor)


def test_sample_loss_scores_the_first_batches_drawn_and_the_finder_uses_it_without_val_batches(digits):
    """Without validation batches the verification runs are scored on the first training batches
    drawn (up to SAMPLE_ROWS examples): the same batches at every call."""
    from lrkit.finder.search import SAMPLE_ROWS
    from lrkit.integrations.jax.trainer import OptaxTrainer

    train, _ = digits
    t = OptaxTrainer(mlp_loss, init_mlp(), optax.adam, train)
    assert t.sample_loss() is None
    for _ in range(6):
        t.step(1e-3)
    k = -(-SAMPLE_ROWS // 64)  # 64-example batches
    want = float(np.mean([float(mlp_loss(t.params, b)) for b in train[:k]]))
    assert t.sample_loss() == pytest.approx(want, rel=1e-5)
    res = find_lr_optax(mlp_loss, init_mlp(), optax.adam, train, train_steps=400, progress=False)
    assert res.details["score"] == "sample_loss()"
    assert len({c["start"] for c in res.details["candidates"]}) == 1

