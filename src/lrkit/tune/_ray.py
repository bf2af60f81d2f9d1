"""``tune_ray``: the same PyTorch search on Ray Tune, for users who already run Ray clusters.

Optional backend (``pip install 'lrkit[ray]'``). The target dict is the one ``lrkit find TARGET``
and :func:`lrkit.tune.tune_torch` take; each Ray trial builds a fresh model and optimizer from it
and reports ``val_loss`` every ``eval_every`` steps (default a tenth of the run).

* ``scheduler="asha"``: Ray's ``ASHAScheduler`` stops poor trials early; the LRs come from
  lrkit's strategy, run inside Ray through ``OptunaSearch(sampler=LrkitSampler(prior))`` (the
  range test places it, as in :func:`lrkit.tune.tune_torch`), or from ``strategy="random"``.
* ``scheduler="pbt"``: Ray's ``PopulationBasedTraining`` starts a population spread around the
  prior's centre (half-decade steps) and, every ``perturbation_interval`` reports, copies the
  weights of a better trial into a worse one and perturbs its LR (x0.8 or x1.2) -- so the LR
  changes during training, and the best trial's LR history is a schedule it discovered
  (``TuneResult.best_schedule``: ``[(step, lr), ...]``). Trials checkpoint their model and
  optimizer for this; the population moves in step (``synch=True``), so a fast trial cannot finish
  before the others started. A trial's final report is never exploited (Ray's PBT would copy a
  better finished trial over it, so that both end as the same run and the worse one's own
  history is lost).

Ray reports an ASHA-stopped trial to its searcher with its last value; lrkit counts it as pruned.

Example::

    result = lrkit.tune.tune_ray(lambda: digits_task().as_target(), train_steps=300,
                                 num_samples=8, scheduler="asha")
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any, Callable

from lrkit.tune._schedules import schedule_for
from lrkit.tune.prior import Prior
from lrkit.tune.result import TrialRecord, TuneResult

__all__ = ["tune_ray"]

SCHEDULERS = ("asha", "pbt")


def _trainable(target: Callable[..., dict], *, train_steps: int, every: int, seed: int, schedule: Any,
               checkpoint: bool) -> Callable[[dict], None]:
    def train(config: dict) -> None:
        import torch
        from ray import tune as rt

        from lrkit.tune._torch import _trainer, build_target

        torch.set_num_threads(1)
        spec = build_target(target, seed)
        trainer = _trainer(spec)
        step, history = 0, []
        ckpt = rt.get_checkpoint()
        if ckpt is not None:  # PBT: continue from a (better) trial's weights
            with ckpt.as_directory() as d:
                state = torch.load(Path(d) / "state.pt", weights_only=False)
            spec["model"].load_state_dict(state["model"])
            spec["optimizer"].load_state_dict(state["optimizer"])
            step, history = state["step"], state["history"]
        while step < train_steps:
            lr = float(config["lr"])
            sched = schedule_for(schedule, lr, train_steps)
            end = min(step + every, train_steps)
            for i in range(step, end):
                loss = trainer.step(float(sched(i)))
                if not math.isfinite(loss):
                    rt.report({"val_loss": math.inf, "step": i + 1, "lr": lr, "diverged": True})
                    return
            step = end
            history.append((step, lr))
            val = float(trainer.evaluate())
            metrics = {"val_loss": val if math.isfinite(val) else math.inf, "step": step, "lr": lr,
                       "diverged": not math.isfinite(val),
                       # the LR history travels with the weights (PBT restores a better trial's): Ray's
                       # per-trial dataframe restarts on a restore, so it cannot tell the schedule
                       "lr_history": json.dumps(history)}
            if checkpoint:
                with tempfile.TemporaryDirectory() as d:
                    torch.save({"model": spec["model"].state_dict(), "optimizer": spec["optimizer"].state_dict(),
                                "step": step, "history": history}, Path(d) / "state.pt")
                    rt.report(metrics, checkpoint=rt.Checkpoint.from_directory(d))
            else:
                rt.report(metrics)
            if not math.isfinite(val):
                return

    return train


def tune_ray(
    target: Callable[..., dict],
    *,
    train_steps: int,
    num_samples: int = 8,
    scheduler: str = "asha",
    strategy: str = "lrkit",
    finder: Any = True,
    low: float | None = None,
    high: float | None = None,
    eval_every: int | None = None,
    schedule: Any = None,
    perturbation_interval: int = 2,
    seed: int = 0,
    storage_path: str | None = None,
    max_concurrent: int | None = None,
    ray_init: dict | None = None,
) -> TuneResult:
    """Search the LR of a PyTorch target on Ray Tune (see the module docstring).

    Args:
        target: ``target() -> dict`` as for ``lrkit find`` (with ``val_loader``).
        train_steps: optimizer steps of one run. num_samples: trials (the PBT population size).
        scheduler: ``"asha"`` or ``"pbt"``. strategy: ``"lrkit"`` or ``"random"`` (ASHA's sampler).
        finder: ``True`` runs the range test for the prior; a ``FinderResult``; ``False``: none.
        low, high: the LR range (default: the prior's). eval_every: steps between reports.
        schedule: the schedule family of each run (PBT perturbs its peak LR).
        perturbation_interval: reports between PBT perturbations.
        storage_path: where Ray keeps results (default a temporary directory).
        max_concurrent: trials at once (default: Ray's CPUs). ray_init: ``ray.init`` arguments
            when Ray is not running yet (default: this machine, no dashboard).

    Returns:
        A :class:`~lrkit.tune.result.TuneResult` (``study`` is Ray's ``ResultGrid``;
        ``best_schedule`` the best trial's LR history under PBT).
    """
    import ray
    from ray import tune as rt

    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    if strategy not in ("lrkit", "random"):
        raise ValueError(f"strategy must be 'lrkit' or 'random' on Ray, got {strategy!r}")
    for name, v, lo_ in (("train_steps", train_steps, 1), ("num_samples", num_samples, 1),
                         ("perturbation_interval", perturbation_interval, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo_:
            raise ValueError(f"{name} must be an integer >= {lo_}, got {v!r}")
    every = max(1, train_steps // 10) if eval_every is None else int(eval_every)
    schedule_for(schedule, 1.0, train_steps)
    prior = _prior(target, finder, train_steps=train_steps, seed=seed, low=low, high=high)
    lo, hi = (low or prior.low, high or prior.high)
    if not ray.is_initialized():
        ray.init(**({"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
                    | (ray_init or {})))
    trainable = _trainable(target, train_steps=train_steps, every=every, seed=seed, schedule=schedule,
                           checkpoint=scheduler == "pbt")
    search_alg, sched = None, None
    if scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        sched = ASHAScheduler(time_attr="step", max_t=train_steps, grace_period=every, reduction_factor=3)
        if strategy == "lrkit":
            import optuna
            from ray.tune.search.optuna import OptunaSearch

            from lrkit.tune.strategies import LrkitSampler

            search_alg = OptunaSearch(space={"lr": optuna.distributions.FloatDistribution(lo, hi, log=True)},
                                      sampler=LrkitSampler(prior, seed=seed), metric="val_loss", mode="min")
            param_space: dict = {}
        else:
            param_space = {"lr": rt.loguniform(lo, hi)}
    else:
        k = num_samples
        start = [prior.center * 10 ** (prior.step * (i - (k - 1) / 2)) for i in range(k)]
        param_space = {"lr": rt.grid_search([min(max(x, lo), hi) for x in start])}
        sched = _pbt(train_steps)(time_attr="training_iteration", perturbation_interval=perturbation_interval,
                                  hyperparam_mutations={"lr": rt.loguniform(lo, hi)}, quantile_fraction=0.5,
                                  resample_probability=0.0, synch=True)
        num_samples = 1  # the grid is the population
    tuner = rt.Tuner(
        trainable, param_space=param_space,
        tune_config=rt.TuneConfig(metric="val_loss", mode="min", scheduler=sched, search_alg=search_alg,
                                  num_samples=num_samples, max_concurrent_trials=max_concurrent),
        run_config=rt.RunConfig(storage_path=storage_path or tempfile.mkdtemp(prefix="lrkit-ray-"),
                                name="lrkit-tune", verbose=0),
    )
    grid = tuner.fit()
    return _result(grid, train_steps=train_steps, scheduler=scheduler, prior=prior)


def _pbt(train_steps: int) -> Any:
    """Ray's ``PopulationBasedTraining``, except that a trial's final report (``step`` at the end of
    the run) is left alone: exploiting it would overwrite a finished run with a copy of another."""
    from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

    class FinalReportKept(PopulationBasedTraining):
        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            if int(result.get("step", 0) or 0) >= train_steps:
                return TrialScheduler.CONTINUE  # the trial ends with its own result
            return super().on_trial_result(tune_controller, trial, result)

    return FinalReportKept


def _prior(target: Callable, finder: Any, *, train_steps: int, seed: int, low: float | None,
           high: float | None) -> Prior:
    from lrkit.scaling import lr_range, optimizer_family
    from lrkit.tune._torch import build_target, run_finder

    family = optimizer_family(build_target(target, seed)["optimizer"])
    if finder is False:
        lo, hi = (low, high) if low is not None and high is not None else lr_range(family)
        return Prior.from_range(lo, hi, family=family)
    result = run_finder(target, train_steps=train_steps, seed=seed) if finder is True else finder
    return Prior.from_finder(result, low=low, high=high, family=family)


def lr_history(res: Any) -> list[tuple[int, float]] | None:
    """A Ray trial's ``[(step, lr), ...]`` as its last report carried it (PBT's exploits included)."""
    raw = (res.metrics or {}).get("lr_history")
    return [(int(s), float(lr)) for s, lr in json.loads(raw)] if raw else None


def _result(grid: Any, *, train_steps: int, scheduler: str, prior: Prior) -> TuneResult:
    records = []
    best, best_hist = None, None
    for i, res in enumerate(grid):
        m = res.metrics or {}
        df = res.metrics_dataframe
        first_lr = float(df["lr"].iloc[0]) if df is not None and len(df) else m.get("lr")
        step = int(m.get("step", 0) or 0)
        value = m.get("val_loss")
        diverged = bool(m.get("diverged")) or value is None or not math.isfinite(value)
        complete = step >= train_steps and not diverged and res.error is None
        state = "failed" if res.error is not None else "complete" if complete else "pruned"
        rec = TrialRecord(number=i, lr=first_lr, value=float(value) if complete else None, state=state,
                          steps=step, params={"lr": first_lr}, diverged=diverged and res.error is None,
                          reason=(str(res.error)[:200] if res.error else (scheduler if state == "pruned" else None)),
                          last_value=float(value) if value is not None else None)
        records.append(rec)
        if complete and (best is None or rec.value < best.value):
            best = rec
            best_hist = lr_history(res)
    steps = sum(r.steps for r in records) + prior.cost_steps
    return TuneResult(best_lr=best.lr if best else None, best_value=best.value if best else None, trials=records,
                      study=grid, strategy=f"ray-{scheduler}", train_steps=train_steps,
                      run_equivalents=steps / train_steps, prior=prior.to_dict(),
                      best_params=dict(best.params) if best else {},
                      best_schedule=best_hist if scheduler == "pbt" else None)
