"""The finder benchmark's task list: a fixed development / held-out split and the task interface."""
from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ is not installed

pytest.importorskip("sklearn")
torch = pytest.importorskip("torch")

from benchmarks import finder_tasks  # noqa: E402
from benchmarks.finder_tasks import ALL_TASKS, DEV, HELDOUT, available_tasks, halves, split_names, train  # noqa: E402

pytestmark = pytest.mark.torch


def test_split_is_the_written_rule_and_covers_every_task_once():
    names = [make.__name__ for make in ALL_TASKS]
    assert len(names) >= 16 and len(set(names)) == len(names)
    ranked = sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    assert list(DEV) == ranked[0::2] and list(HELDOUT) == ranked[1::2]
    assert split_names() == (list(DEV), list(HELDOUT))
    assert not set(DEV) & set(HELDOUT) and set(DEV) | set(HELDOUT) == set(names)
    assert abs(len(DEV) - len(HELDOUT)) <= 1


def test_unknown_names_and_halves_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown task name"):
        available_tasks(["no_such_task"])
    with pytest.raises(ValueError, match="half must be 'dev', 'heldout' or 'both'"):
        halves("test")


def test_train_reports_every_tenth_and_stops_when_asked():
    (task,), _ = available_tasks(["digits_mlp_adamw_short"])
    seen = []
    val, diverged = train(task, 1e-3, seed=0, report=lambda step, v: seen.append((step, v)) or step >= 27)
    assert [s for s, _ in seen] == [9, 18, 27] and not diverged and val == seen[-1][1]
    full, _ = train(task, 1e-3, seed=0)
    assert math.isfinite(full) and full < seen[0][1]


def test_tasks_definition_marks_clipping_hidden_validation_and_schedules():
    fullbatch = finder_tasks.logreg_fullbatch_sgd()
    assert fullbatch.definition() == {"finder_val": False}
    assert fullbatch.batch_size == len(fullbatch.x_train)
    assert finder_tasks.diabetes_clip_sgd().definition() == {"clip": 1.0}
    assert finder_tasks.digits_mlp_adam().definition() == {}


def test_the_framework_finder_benchmark_splits_by_the_written_rule_and_scores_regret():
    from benchmarks import finder_frameworks as ff
    from benchmarks.framework_tasks import DEV as FDEV, HELDOUT as FHELD, TASKS

    ranked = sorted(TASKS, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    assert (list(FDEV), list(FHELD)) == (ranked[0::2], ranked[1::2])
    assert {TASKS[n].framework for n in FDEV} == {TASKS[n].framework for n in FHELD} == {"hf", "lightning", "keras"}
    grid = ff._grid(-2.0, 0.0)
    assert len(grid) == 9 and grid[0] == pytest.approx(0.01) and grid[-1] == pytest.approx(1.0)
    # a synthetic cache: the oracle is the best grid mean; a method at twice its loss has regret 1
    name = FDEV[0]
    cache = {}
    for s in ff.SEEDS:
        for lr in ff._grid(*TASKS[name].grid):
            cache[ff._key(name, "grid", s, lr)] = {"val_loss": 1.0 + abs(math.log10(lr) + 2), "lr": lr}
        for m in ff.METHODS:
            cache[ff._key(name, m, s, None)] = {"val_loss": 2.0 if m == "lrkit" else math.nan, "lr": 0.1,
                                               "train_steps": 100, "finder_steps": 30}
    row = ff.score([name], cache)[name]
    assert row["oracle"] == pytest.approx(1.0) and row["oracle_lr"] == pytest.approx(0.01)
    assert row["lrkit"]["regret"] == pytest.approx(1.0) and row["lrkit"]["cost"] == pytest.approx(0.3)
    assert row["default"]["val"] == pytest.approx(math.log(ff.CLASSES.get(name, 10)))  # non-finite: untrained


def test_the_framework_autopilot_benchmark_scores_against_the_better_of_both_oracles():
    from benchmarks import autopilot_frameworks as af
    from benchmarks import finder_frameworks as ff
    from benchmarks.framework_tasks import DEV as FDEV, TASKS

    name = FDEV[1]
    cache = {ff._key(name, "grid", s, lr): {"val_loss": 1.0 + abs(math.log10(lr) + 2), "lr": lr}
             for s in ff.SEEDS for lr in ff._grid(*TASKS[name].grid)}  # the task schedule's oracle: 1.0 at 0.01
    peaks = af._peaks(name, cache)
    assert peaks[4] == pytest.approx(0.01) and len(peaks) == len(af.PEAK_STEPS)
    for s in ff.SEEDS:
        for m in ff.METHODS:
            cache[ff._key(name, m, s, None)] = {"val_loss": 1.6, "lr": 0.1, "train_steps": 100, "finder_steps": 30}
        for p in peaks:  # the autopilot schedule's oracle: 0.8 at 0.1
            cache[ff._key(name, "autopilot_peak", s, p)] = {"val_loss": 0.8 + abs(math.log10(p) + 1), "lr": p}
        cache[ff._key(name, "autopilot", s, None)] = {"val_loss": 1.2, "lr": 0.1, "train_steps": 100,
                                                    "finder_steps": 25, "rollbacks": 1}
    row = af.score([name], cache)[name]
    assert row["ref"] == pytest.approx(0.8) and row["ap_oracle_lr"] == pytest.approx(0.1)
    assert row["autopilot"]["regret"] == pytest.approx(0.5) and row["autopilot"]["rollbacks"] == len(ff.SEEDS)
    assert row["lrkit"]["regret_ref"] == pytest.approx(1.0)


def test_the_framework_benchmark_cache_drops_runs_of_older_versions(tmp_path, monkeypatch):
    import json

    from benchmarks import finder_frameworks as ff

    keep = [ff._key("t", "lrkit", 0, None), ff._key("t", "autopilot", 1, None), ff._key("t", "grid", 0, 0.1),
            ff._key("t", "autopilot_peak", 0, 0.1), ff._key("t", "default", 2, None)]
    stale = [f"t|lrkit-v{ff.LRKIT_VERSION - 1}|0", f"t|autopilot-v{ff.AUTOPILOT_VERSION - 1}|1"]
    path = tmp_path / "runs.json"
    path.write_text(json.dumps({k: {"val_loss": 1.0} for k in keep + stale}))
    monkeypatch.setattr(ff, "RESULTS", path)
    assert sorted(ff._load()) == sorted(keep)


def test_the_lion_benchmark_swaps_only_the_optimizer_and_trains_with_lion():
    """Each Lion task is its finder task with ``lion_pytorch.Lion`` at the given LR (family "lion",
    Lion's grid), the same data, model and run; a run at a sane Lion LR learns."""
    from lion_pytorch import Lion

    from benchmarks import finder_lion
    from benchmarks.finder_swapped import swapped

    (task,), _ = available_tasks(["moons_mlp_adadelta"])
    lion = swapped(task, finder_lion.LION)
    assert (lion.family, lion.grid) == ("lion", finder_lion.GRID) and task.family == "adadelta"
    assert lion.x_train is task.x_train and lion.budget == task.budget and lion.make_model is task.make_model
    opt = lion.make_optimizer(list(lion.make_model().parameters()), 3e-3)
    assert isinstance(opt, Lion) and opt.param_groups[0]["lr"] == 3e-3
    start = finder_tasks.initial_val_loss(lion)
    val, diverged = train(lion, 3e-3, seed=0)
    assert not diverged and val < 0.8 * start


def test_the_unscaled_input_warning_fires_on_the_unscaled_tasks_only():
    # lrkit.finder.inputs, on each task's training inputs: the three tasks on raw features (the
    # worst of every table) and none of the rest (those reading ../shared/data, where it is)
    from lrkit.finder.inputs import unscaled_inputs

    tasks, _ = available_tasks([f.__name__ for f in ALL_TASKS])
    fired = {t.name for t in tasks if unscaled_inputs(t.x_train[:1024].float().numpy() if t.x_train.is_floating_point()
                                                      else t.x_train[:1024].numpy())}
    assert fired == {"logreg_unscaled_sgd", "logreg_fullbatch_sgd", "wine_unscaled_adagrad"}


def test_the_one_seed_grid_floor_judges_each_seeds_pick_on_the_other_seeds():
    from benchmarks.finder_regret import grid_other_seed

    # grid x seeds: seed 0 is best at LR 0 (where seed 1 is poor), seed 1 at LR 1 (where seed 0 is fair)
    orc = {"seed_vals": [[1.0, 3.0], [2.0, 1.5], [5.0, 5.0]], "best_val": 1.75}  # LR 1's mean 1.75 is the oracle
    # seed 0 searches: picks LR 0, judged on seed 1 -> 3.0; seed 1 searches: picks LR 1, judged on seed 0 -> 2.0
    assert grid_other_seed(orc) == pytest.approx((2.5 - 1.75) / 1.75)
    # identical seeds: the pick is the oracle's LR and the floor is 0
    assert grid_other_seed({"seed_vals": [[2.0, 2.0], [1.0, 1.0]], "best_val": 1.0}) == 0.0
    assert grid_other_seed({"best_val": 1.0}) is None and grid_other_seed({"seed_vals": [[1.0]], "best_val": 1.0}) is None


def test_the_muon_benchmark_trains_torchs_recipe_as_one_optimizer():
    """Each Muon task is its finder task with Muon for the 2-D parameters and AdamW for the rest at
    0.015x (one combined optimizer whose first LR is Muon's); the trainer keeps that ratio as it sets
    the LR; a run at Keller Jordan's default learns."""
    from benchmarks import finder_muon
    from benchmarks.finder_swapped import swapped

    (task,), _ = available_tasks(["moons_mlp_adadelta"])
    muon = swapped(task, finder_muon.MUON)
    assert muon.family == "muon" and muon.grid == finder_muon.GRID
    trainer = finder_tasks.TensorTrainer(muon, seed=0, lr=0.02)
    inner = trainer.optimizer.optimizers
    assert [type(o).__name__ for o in inner] == ["Muon", "AdamW"]
    assert all(p.ndim == 2 for g in inner[0].param_groups for p in g["params"])
    assert all(p.ndim != 2 for g in inner[1].param_groups for p in g["params"])
    trainer.step(0.05)
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert lrs[0] == 0.05 and lrs[1] == pytest.approx(0.05 * finder_muon.ADAMW_RATIO)
    start = finder_tasks.initial_val_loss(muon)
    val, diverged = train(muon, 0.02, seed=0)
    assert not diverged and val < 0.8 * start
