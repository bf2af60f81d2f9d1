"""The doctor's signs as parts: each sign's docstring example runs, the Doctor composes them in
one ranked list, and every sign's state survives ``state_dict``/``load_state_dict``."""
import doctest
import importlib
import pkgutil

import numpy as np
import pytest

import lrkit.doctor.signs as signs_pkg
from lrkit.doctor import Doctor
from lrkit.doctor.signs import Sign

SIGN_MODULES = [importlib.import_module(f"lrkit.doctor.signs.{m.name}") for m in pkgutil.iter_modules(signs_pkg.__path__)]


@pytest.mark.parametrize("module", SIGN_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_sign_docstring_examples_run(module):
    failures, _ = doctest.testmod(module)
    assert failures == 0


def test_the_doctor_lists_every_sign_once_with_disjoint_state_keys():
    doc = Doctor(window=10)
    signs = list(doc.signs.values())
    assert all(isinstance(s, Sign) for s in signs)
    assert len({s.name for s in signs}) == len(signs)
    keys = [set(s.state_dict()) for s in signs]
    assert all(not (a & b) for i, a in enumerate(keys) for b in keys[i + 1:])
    assert not set().union(*keys) & set(doc._track.state_dict())


def _relapse_run(seed, relapse_to, noise_after, best=1.2, start=2.3, n=300):
    """A classifier-like run: the loss falls from ``start`` to ``best`` in 30 steps (noise 5%), then
    drifts back to ``relapse_to`` with a per-step log-noise of ``noise_after`` (an LR too high)."""
    rng = np.random.default_rng(seed)
    losses = []
    for t in range(n):
        if t < 30:
            level = start * (best / start) ** (t / 30)
            noise = 0.05
        else:
            level = best * (relapse_to / best) ** min(1.0, (t - 30) / 30)
            noise = noise_after
        losses.append(level * float(np.exp(noise * rng.standard_normal())))
    return losses


def _first_diverging(losses):
    doc = Doctor()
    for t, loss in enumerate(losses):
        d = doc.observe(t, loss, lr=0.1)
        if d.verdict == "diverging":
            return t, d
    return None, doc.diagnosis


@pytest.mark.parametrize("seed", range(6))
def test_a_run_that_gives_back_most_of_its_progress_is_diverging_though_noisy(seed):
    """Back at 2.1 after 2.3 -> 1.2, with a noise that grew with the trouble: 1.75x the best only
    (under the 2x ratio) and inside a margin made of the noise now, but 90% of the progress (in
    log-loss) is gone, well beyond the noise the run had at its best."""
    step, d = _first_diverging(_relapse_run(seed, relapse_to=2.1, noise_after=0.45))
    assert step is not None and step < 150, d.message  # (without the rule: flat or healthy on 3 of 6 seeds)
    assert d.evidence.get("progress_lost", 0.7) >= 0.7 and d.advice[0].startswith("lower the LR")


@pytest.mark.parametrize("seed", range(6))
def test_a_noisy_run_that_keeps_its_progress_is_not_diverging(seed):
    """The same noise after the best, the level staying where it got to: no finding from it."""
    step, d = _first_diverging(_relapse_run(seed, relapse_to=1.25, noise_after=0.45))
    assert step is None, d.message


def test_giving_back_a_small_progress_is_not_enough():
    """A run that only went from 2.3 to 1.8 (less than the 1.5x LOST_MIN_PROGRESS) and drifted
    back to 2.2 is not called diverging by this rule (its ratio to the best is 1.2)."""
    step, d = _first_diverging(_relapse_run(0, relapse_to=2.2, noise_after=0.05, best=1.8))
    assert step is None, d.message


def test_no_flat_verdict_within_a_window_of_a_cut_of_a_steady_lr():
    """A quiet loss at a steady LR, then the LR cut 10x (a guard's rollback, a step schedule): the
    stretch right after the cut is not yet evidence that the LR is too low; a window later it is."""
    rng = np.random.default_rng(0)
    doc = Doctor(window=20)
    verdicts = {}
    for t in range(200):
        lr = 1e-3 if t < 120 else 1e-4
        d = doc.observe(t, 2.3 * float(np.exp(0.01 * rng.standard_normal())), lr=lr)
        verdicts[t] = d.verdict
    assert verdicts[119] == "flat"  # flat at the steady LR
    assert all(verdicts[t] != "flat" for t in range(125, 138))  # not right after the cut
    assert verdicts[199] == "flat"  # and flat again once the new LR has had its window


def test_the_tail_of_a_smooth_decay_is_no_cut():
    """A too-low LR decaying linearly to 0 (the Trainer's default schedule) is still flat at the
    end, although the LR halves between the last checks."""
    rng = np.random.default_rng(1)
    doc = Doctor(window=20)
    for t in range(200):
        d = doc.observe(t, 2.3 * float(np.exp(0.01 * rng.standard_normal())), lr=1e-6 * (1 - t / 200))
    assert d.verdict == "flat"
