r"""The LR guard: roll a run back to its last good state and lower the LR when it blows up.

A :class:`Guard` wraps anything with ``snapshot()`` / ``restore(state)`` (the
:class:`~lrkit.finder.trainer.Trainer` protocol) and a :class:`~lrkit.doctor.core.Doctor`.
Two ways to drive it:

* ``guard.step(lr)`` -- the guard runs ``trainer.step(lr * guard.lr_multiplier)`` itself;
* ``guard.observe(loss, lr=..., grad_norm=...)`` -- your loop (or a framework callback) ran the
  step and reports its loss; the guard only watches, snapshots and restores. The framework
  adapters (:mod:`lrkit.integrations.torch.doctor` and the Lightning, Keras and Hugging Face
  callbacks) use this.

After every observation the doctor gives a verdict. On a verdict in ``act_on`` (``nan`` and
``diverging`` by default) the guard *intervenes*:

.. math::

    \theta \leftarrow \theta_{L^\*},\qquad
    \text{doctor} \leftarrow \text{doctor}_{L^\*},\qquad
    m \leftarrow m \cdot c

with :math:`\theta_{L}` the trainer state snapshotted just before step :math:`L`, :math:`m` the
LR multiplier (:attr:`Guard.lr_multiplier`, starts at 1) and :math:`c` the factor below
(:math:`\gamma` = ``lr_factor`` when the LR is to blame).

**When the LR is lowered** (:mod:`lrkit.doctor.lr_policy`). Not every blow-up is the LR's fault:
a bad batch, a corrupt shard, a NaN written into a weight are one-off faults, and a 10x lower LR
would cost the rest of the run for nothing. With ``forgive_first=True`` (the default) :math:`c` is
:math:`1/r` when the LR was raised :math:`r` times and held since the restored snapshot (the raise
is undone); 1 for a *first problem* out of a run that has shown it trains at this LR (the target
is not the initial state -- or it is, and the run trained at least 20 good steps in a row from it,
its level fell under its start and no blow-up is dated to its first window -- the onset is not
before it, and no rollback in the last :math:`2K` steps or from this snapshot); 1 once per run for
a NaN with no blow-up before it at an untried start (a replay tells a bad batch from the LR; not
counted against ``max_retries``); else :math:`\gamma`. A lowering right after a forgiven problem is
a halving (:math:`\max(\gamma, 1/2)`) on *probation*: once the run has trained :math:`2K` steps
past it and a newer snapshot is healthy, the multiplier ramps back over :math:`2K` steps
(:attr:`Guard.recoveries`); trouble during probation, or within :math:`4K` steps of that, lowers
it by :math:`\gamma`, the latter for good. ``forgive_first=False``: :math:`c = \gamma` on every
rollback without a held raise.

**Which snapshot is "last good".** A snapshot is taken after every ``snapshot_every`` (= :math:`K`)
*consecutive* steps with a ``healthy`` or ``flat`` verdict (never during ``fluctuating``), and
the losses that *follow* it verify it (:mod:`lrkit.doctor.snapshots`): a snapshot is healthy when
its first loss was finite and the median of the (up to ten) log-losses trained from it before the
doctor's onset -- at least its first one -- is within ``tolerance`` (plus noise) of the best level
the run had reached when it was taken. The guard restores :math:`L^\*` = the **newest
verified-healthy snapshot**. So an onset dated too early cannot send the run back past good
states (each of them is then judged by its own first loss), and a state taken while the loss was
already drifting up fails its verification however "healthy" the doctor still said it was. A
snapshot taken after the onset is judged against the doctor's best level and the noise the run had
when it got there, where those are stricter than its own (a run that went wrong grew noisy: that
noise vouches for none of its states); with the doctor's ``lr_ceiling`` set (the autopilot sets
it), snapshots taken while the LR was above it are passed over while another is left (a state
trained at an LR known not to train, and an optimizer state shaped by it, is no state to go back
to).
A run the doctor finds *stuck* since a blow-up (evidence ``stuck``: no decrease since the onset)
goes back to a state from before the onset: every later state is the dead one, and its flat
losses, the best level the run has had since, would vouch for it; a best snapshot taken while
stuck is dropped too. A run the doctor finds hurt by an LR *raised and held* (evidence
``lr_rise``: the onset is the raise) goes back to a state from before the raise too: the states
after it were trained at the LR the rollback undoes. When no snapshot qualifies, the oldest kept
one (the initial state) is restored and the record says ``verified=False``. Snapshots newer than
the one restored are dropped. The doctor goes back to its state at the snapshot; if that is
still within its opening stretch (fewer than ``flat_steps`` observations), it starts afresh from
the restored point instead, so that slow progress at the lowered LR is not judged against the
opening losses at the failed LR (seen with the Hugging Face guard: "diverging since step 1" right
after a rollback to the start).

**A snapshot before a sudden raise** (:mod:`lrkit.doctor.raise_watch`). When the next step's LR
is at least :data:`~lrkit.doctor.raise_watch.RAISE_SNAPSHOT` times the last one's (a raise by
hand, a misconfigured stage, a warm restart) after a stretch where it rose less than 1.5x (not a
warmup's first steps), and the run has had at least :math:`\max(2, K/5)` healthy steps since its
last snapshot, the guard takes one before that step (:meth:`Guard.before_step`; :meth:`Guard.step`
calls it): the moment the risk rises is the state a rollback of that raise wants, and without it
the steps since the last periodic snapshot (up to :math:`K`) are lost with the raise. A
schedule's smooth changes never trigger it.

**Reach.** ``keep`` rolling snapshots (default 4) are thinned geometrically (a few recent, a few
older ones; :func:`lrkit.doctor.snapshots.thin_index`), beside the initial state
(``keep_initial``) and the **best** one (lowest validation loss when validation losses are
observed, else lowest smoothed training loss), which is never thinned away.

**Clock.** Steps are counted by the guard (every :meth:`Guard.step` / :meth:`Guard.observe` is one
step, :attr:`Guard.step_count`), and a rollback does *not* rewind this clock: the model goes
back, time goes on (your schedule keeps its place, the doctor keeps receiving increasing steps).
What the model holds is counted apart: :attr:`Guard.trained_steps` is the clock less the steps
the rollbacks undid (each snapshot records its own count), so a loop ``while guard.trained_steps
< T`` trains the undone steps again and ends with :math:`T` steps of training in the model, as a
run resumed from a checkpoint does; ``while guard.step_count < T`` keeps the run's length.
Whether the *data* is replayed is up to the trainer's ``restore`` (``TorchTrainer`` restores its
loader's generator and so replays the same batches; the framework callbacks let the loader go
on). With replay, a batch that is itself broken (NaN in the data) comes back after every
rollback and the guard gives up after ``max_retries``: by design, since a lower LR cannot fix
bad data.

**A bad batch is skipped, not rolled back** (``skip_spikes=True``, the default). The loss of a step is
known before its update: a loss far above the run's level with the LR steady
(:mod:`lrkit.doctor.spikes`) has its update left out (:meth:`Guard.skip`; :meth:`Guard.step` asks a
trainer with ``skips_steps``), so the model is never wrecked by it and nothing is lost; the step is
in :attr:`Guard.skipped_steps`, not in the doctor's history, and counts on the clock but not in
:attr:`Guard.trained_steps`. NaN losses, blow-ups at a raised LR and long runs of spikes stay the
rollback's.

**Bounded retries.** Each snapshot may be restored at most ``max_retries`` times; one more
problem before a newer snapshot has been taken raises :class:`GuardGaveUp` (a ``RuntimeError``)
after restoring the **best** snapshot seen (``GuardGaveUp.best_step``, ``best_by``:
``"val_loss"`` or ``"train_loss"``, ``best_value``), so the state you are left with is the best
the run reached.

**Cost.** A snapshot's time (the part the training loop waits for) is measured; when it exceeds
50 ms (a model of real size), the snapshot period is stretched beyond ``snapshot_every`` -- up
to 10 times it -- so that snapshots cost at most ``max_overhead`` (default 1%) of the training
time: :attr:`Guard.snapshot_interval`. The snapshots kept, their store and this period are a
:class:`~lrkit.doctor.snapshot_set.SnapshotSet`; the guard decides what to restore. A trainer with ``recycle(state)`` (every PyTorch
integration's) gets back each snapshot the guard will never read again -- dropped from the
rolling set, or durable on disk -- and copies the next one into that memory: once the rolling set
is full a snapshot is a plain copy into memory already owned (30 ms instead of about 1 s for a
51M-parameter model with its optimizer state on one CPU thread; see BENCHMARKS.md).

**Storage** (:mod:`lrkit.doctor.storage`). ``"memory"`` keeps the trainer's snapshot objects;
``"disk"`` pickles each one, on a background thread, atomically into ``<storage_dir>/<run_id>/``
with a lock and a ``manifest.json`` (step, LR multiplier, doctor state of every snapshot, the
interventions), removed by :meth:`Guard.close` (or ``with Guard(...)``). With a ``run_id`` and
``resume=True``, a process killed with ``kill -9`` and started again finds the manifest and
:meth:`Guard.start` continues from the newest good snapshot with the same LR multiplier and doctor
state (:attr:`Guard.resumed_from`; your loop goes on from :attr:`Guard.step_count`). A snapshot
file that is missing or corrupt when needed is reported (ERROR line naming it) and the next good
snapshot is used instead. The trainer's state must be picklable *and* restore correctly after
unpickling (``TorchTrainer``'s and ``TorchDoctor``'s snapshots do, RNG states and data loaders'
generators included).

Example:
    >>> class Quadratic:            # a 1-D quadratic trained by gradient descent: f = x^2
    ...     def __init__(self): self.x = 1.0
    ...     def snapshot(self): return self.x
    ...     def restore(self, s): self.x = s
    ...     def evaluate(self): return None
    ...     def step(self, lr):
    ...         loss = self.x ** 2
    ...         self.x -= lr * 2 * self.x
    ...         return loss
    >>> import logging
    >>> guard = Guard(Quadratic(), snapshot_every=5, lr_factor=0.8, logger=logging.getLogger("doc"))
    >>> losses = [guard.step(1.2) for _ in range(200)]  # lr * 2 = 2.4 > 2: diverges, is caught
    >>> [(i.restored_to, round(i.new_multiplier, 3)) for i in guard.interventions]
    [(0, 0.8)]
    >>> guard.trainer.x ** 2 < 1e-6                       # then converges at 0.96 (x factor -0.92)
    True
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

from lrkit.doctor.core import Diagnosis, Doctor
from lrkit.doctor.guarded_watch import GuardedWatch, PendingValidation, watch_doctor  # noqa: F401 - re-exported
from lrkit.doctor.interventions import GuardGaveUp, Intervention
from lrkit.doctor.lr_policy import LRPolicy, unstable_start
from lrkit.doctor.raise_watch import RAISE_SNAPSHOT, RAISE_STEADY, RaiseWatch
from lrkit.doctor.relapse import RelapseWatch
from lrkit.doctor.snapshot_set import SnapshotSet
from lrkit.doctor.snapshots import LEVEL, HealthTracker, SnapshotRecord, best_snapshot, choose_target
from lrkit.doctor.guard_skips import SKIPS_KEPT, SkipsSpikes
from lrkit.doctor.guard_state import PersistsGuard
from lrkit.doctor.spikes import SPIKE_FACTOR, SpikeFilter
from lrkit.doctor.storage import DiskStore, MemoryStore, SnapshotError

__all__ = ["Guard", "GuardGaveUp", "Intervention", "SnapshotError", "RAISE_SNAPSHOT", "RAISE_STEADY", "SKIPS_KEPT"]

_GOOD = ("healthy", "flat", "converged", "overfitting")  # verdicts under which a snapshot may be taken


class Guard(SkipsSpikes, PersistsGuard):
    r"""Watch a run with a :class:`~lrkit.doctor.core.Doctor`; on ``nan``/``diverging`` restore the
    newest verified-healthy snapshot and multiply the LR by ``lr_factor`` (see the module docstring).

    Args:
        trainer: an object with ``snapshot() -> state`` and ``restore(state)``; for
            :meth:`step` also ``step(lr) -> float`` (the :class:`~lrkit.finder.trainer.Trainer`
            protocol). Optionally ``recycle(state)``: the guard hands back each state it will
            never read again (dropped from memory, or written to disk), so that the next
            ``snapshot()`` can copy into that memory instead of allocating a model's size
            (``recycle(None)`` on :meth:`close`). Optionally ``memory_available()``: the free bytes
            where its snapshots stay in memory, when that is not the host's (an accelerator; see
            :attr:`memory_warning`).
        doctor: the :class:`~lrkit.doctor.core.Doctor` to use (a fresh ``Doctor()`` by default).
            The guard drives it: do not feed it yourself.
        snapshot_every: ``K``, take a snapshot every ``K`` steps while the verdict is healthy
            (or flat). An int >= 1 (default 50). Smaller = less lost on a rollback, more copies.
        lr_factor: :math:`\gamma`, the LR multiplier is multiplied by this on an intervention;
            in (0, 1) (default 0.1: "lower the LR about 10x", as the doctor advises).
        forgive_first: keep the LR on a first problem out of a healthy run and lower it only when
            a problem comes back soon (see "When the LR is lowered"); ``False``: lower it on every
            intervention. Default ``True``.
        max_retries: how many times one snapshot may be restored; an int >= 1 (default 3).
        act_on: the verdicts that trigger a rollback; a subset of ``{"nan", "diverging",
            "fluctuating"}`` (default ``("nan", "diverging")``).
        storage: ``"memory"`` or ``"disk"`` (pickle the snapshots into ``storage_dir``).
        storage_dir: parent directory for ``storage="disk"`` (created if missing; default a new
            temporary directory, removed by :meth:`close`). Only with ``storage="disk"``.
        on_intervention: called with each :class:`Intervention` after the rollback.
        logger: where the WARNING line of each intervention goes (default
            ``logging.getLogger("lrkit.guard")``).
        take_initial_snapshot: snapshot the trainer now (step 0). Adapters that build the guard
            before the model exists pass ``False`` and call :meth:`start` later.
        keep_initial: also keep the very first snapshot for the whole run (default ``True``).
        keep: the number of rolling snapshots, thinned geometrically; an int >= 2 (default 4).
        tolerance: how far above the best level (relative) a snapshot's following losses may be
            for it to count as healthy; a number > 0 (default 0.25).
        max_overhead: the largest fraction of the training time snapshots may take; the period
            is stretched (up to ``10 * snapshot_every``) when a snapshot costs more than 50 ms
            (default 0.01); ``None``: never.
        run_id: the name of this run's directory under ``storage_dir`` (``storage="disk"``);
            default a unique one. Give one to be able to resume.
        resume: with ``storage="disk"`` and a ``run_id``: if the run's manifest exists (a killed
            process), :meth:`start` continues from it instead of taking a new initial snapshot.
        sync_writes: with ``storage="disk"``: training waits until each snapshot (and the
            manifest naming it) is on disk, so a ``kill -9`` loses at most one snapshot period of
            work. Default ``False``: files are written on a background thread while training goes
            on, and a kill during a write loses the period plus the steps of that write (the
            previous snapshot is the newest complete one).
        skip_spikes: do not apply the update of a step whose loss is a spike far above the run's
            level while the LR held steady -- a bad batch or data shard (:mod:`lrkit.doctor.spikes`):
            the model stays as it was instead of being wrecked and rolled back. The loss must be
            known before the update: :meth:`step` asks the trainer to skip when it can (a
            ``step(lr, skip=...)`` and ``skips_steps = True``, as lrkit's ``TorchTrainer``), a loop
            asks :meth:`skip` itself (``TorchDoctor`` does in ``after_backward(loss)``). Default
            ``True``: a trainer that cannot skip and a loop that never asks lose nothing by it;
            ``False`` trains on every batch and leaves spikes to the doctor and the rollback.
        spike_factor: a spike is this many times the run's level (and above its start's); > 1
            (default 10).
        max_skips: the most updates skipped in a row before the doctor takes over (a model whose
            every batch is a spike is broken); an int >= 1, default ``snapshot_every`` (never more
            than a snapshot period of steps skipped in a row).
        agree: for a run on several processes that each run a guard: ``agree(values, op)`` takes
            this process's numbers (a list of floats) and returns what every process shares: their
            ``op`` over the processes, ``"mean"``, ``"min"`` or ``"max"`` (every process must call
            it at the same point). The one decision the guard takes on time, the snapshot period
            (``max_overhead``), is taken on the means, so that every process snapshots at the same
            steps; ``resume=True`` resumes every process from the newest snapshot all of them hold
            (:meth:`start`). Default: the trainer's ``agree`` method if it has one (lrkit's
            ``TorchTrainer``: over the ``torch.distributed`` ranks), else this process's own
            numbers. The torch and Lightning adapters pass one.
    """

    def __init__(
        self,
        trainer: Any,
        *,
        doctor: Doctor | None = None,
        snapshot_every: int = 50,
        lr_factor: float = 0.1,
        forgive_first: bool = True,
        max_retries: int = 3,
        act_on: tuple[str, ...] = ("nan", "diverging"),
        storage: str = "memory",
        storage_dir: str | os.PathLike[str] | None = None,
        on_intervention: Callable[[Intervention], Any] | None = None,
        logger: logging.Logger | None = None,
        take_initial_snapshot: bool = True,
        keep_initial: bool = True,
        keep: int = 4,
        tolerance: float = 0.25,
        max_overhead: float | None = 0.01,
        run_id: str | None = None,
        resume: bool = False,
        sync_writes: bool = False,
        skip_spikes: bool = True,
        spike_factor: float = SPIKE_FACTOR,
        max_skips: int | None = None,
        agree: Callable[[list[float], str], Sequence[float]] | None = None,
    ) -> None:
        for name in ("snapshot", "restore"):
            if not callable(getattr(trainer, name, None)):
                raise ValueError(
                    f"Guard: trainer must have a callable {name}() (the Trainer protocol), "
                    f"got {type(trainer).__name__} without it"
                )
        if doctor is None:
            doctor = Doctor()
        elif not isinstance(doctor, Doctor):
            raise ValueError(f"Guard: doctor must be an lrkit.doctor.Doctor or None, got {type(doctor).__name__}")
        _check_int("snapshot_every", snapshot_every, 1)
        _check_number("lr_factor", lr_factor, lambda v: 0 < v < 1, "a number in (0, 1)")
        _check_int("max_retries", max_retries, 1)
        _check_int("keep", keep, 2)
        _check_number("tolerance", tolerance, lambda v: v > 0, "a number > 0")
        if max_overhead is not None:
            _check_number("max_overhead", max_overhead, lambda v: 0 < v < 1, "a number in (0, 1) or None")
        act = tuple(act_on) if isinstance(act_on, (tuple, list, set, frozenset)) else None
        allowed = ("nan", "diverging", "fluctuating")
        if not act or any(v not in allowed for v in act):
            raise ValueError(f"Guard: act_on must be a non-empty subset of {allowed}, got {act_on!r}")
        if storage not in ("memory", "disk"):
            raise ValueError(f"Guard: storage must be 'memory' or 'disk', got {storage!r}")
        for name, value in (("storage_dir", storage_dir), ("run_id", run_id)):
            if value is not None and storage != "disk":
                raise ValueError(f"Guard: {name} is only used with storage='disk', got storage={storage!r}")
        for name, flag in (("resume", resume), ("sync_writes", sync_writes), ("forgive_first", forgive_first),
                           ("skip_spikes", skip_spikes)):
            if not isinstance(flag, bool):
                raise ValueError(f"Guard: {name} must be True or False, got {flag!r}")
        if sync_writes and storage != "disk":
            raise ValueError(f"Guard: sync_writes is only used with storage='disk', got storage={storage!r}")
        if resume and (storage != "disk" or run_id is None):
            raise ValueError("Guard: resume=True needs storage='disk' and a run_id (the run to find again)")
        if agree is None:  # the trainer's own, if it has one
            agree = getattr(trainer, "agree", None)
            agree = agree if callable(agree) else None
        elif not callable(agree):
            raise ValueError(f"Guard: agree must be callable or None, got {type(agree).__name__}")
        if on_intervention is not None and not callable(on_intervention):
            raise ValueError(f"Guard: on_intervention must be callable or None, got {type(on_intervention).__name__}")
        self.trainer = trainer
        self.doctor = doctor
        self.snapshot_every = snapshot_every
        self.lr_factor = float(lr_factor)
        self.forgive_first = forgive_first
        self.max_retries = max_retries
        self.act_on = act
        self.storage = storage
        self.keep = keep
        self.tolerance = float(tolerance)
        self.max_overhead = None if max_overhead is None else float(max_overhead)
        self.on_intervention = on_intervention
        self.agree = agree
        self.logger = logger if logger is not None else logging.getLogger("lrkit.guard")
        self.keep_initial = bool(keep_initial)
        self.resume = resume
        self.sync_writes = sync_writes
        self._storage_dir = storage_dir
        self._run_id = run_id
        # the initial, rolling and best snapshots, their store, the period their cost allows
        self._set = SnapshotSet(keep=keep, every=snapshot_every, tolerance=self.tolerance,
                                max_overhead=self.max_overhead, make_store=self._make_store)
        self._open_store()
        self._multiplier = 1.0
        self._clock = 0
        self._trained = 0  # steps of training in the current state (the clock less what rollbacks undid)
        self._health = HealthTracker()
        self._interventions: list[Intervention] = []
        self._last_rolled_back = False
        self._relapse_watch = RelapseWatch()  # after a rollback: the restored state's level
        self._policy = LRPolicy(lr_factor, forgive_first)  # what a rollback does to the LR
        self._since = 0  # good steps since the last snapshot or rollback
        self._good_streak = 0  # good steps in a row since the start or the last rollback (snapshots apart)
        self._raise_watch = RaiseWatch()  # the last steps' LRs and losses: a sudden raise gets a snapshot
        try:  # a spike far above the run's level: its update is not applied (skip_spikes)
            spikes = SpikeFilter(spike_factor, snapshot_every if max_skips is None else max_skips)
        except ValueError as exc:
            raise ValueError(f"Guard: {exc}") from None
        self._init_skips(spikes if skip_spikes else None)
        self._started = False
        self._t_last: float | None = None
        #: the step the run was resumed from (``resume=True`` found a manifest), else ``None``
        self.resumed_from: int | None = None
        #: the warning logged when snapshots kept in memory would take more than half of the memory
        #: available (:meth:`SnapshotSet.memory_warning`, checked on the first snapshot), else ``None``
        self.memory_warning: str | None = None
        self._memory_checked = False
        if take_initial_snapshot:
            self.start()

    # ------------------------------------------------------------------ public state
    @property
    def lr_multiplier(self) -> float:
        """Multiply your schedule's LR by this (``guard.step`` does it for you)."""
        return self._multiplier

    @property
    def recoveries(self) -> list[int]:
        """The steps at which a lowering on probation began to be undone (:mod:`lrkit.doctor.lr_policy`)."""
        return list(self._policy.recoveries)

    @property
    def step_count(self) -> int:
        """The number of the next step (the guard's clock; never rewound by a rollback)."""
        return self._clock

    @property
    def trained_steps(self) -> int:
        """The steps of training the current state holds: :attr:`step_count` less the steps the
        rollbacks undid. ``while guard.step_count < T`` keeps the run's length (a rollback's lost
        steps are lost); ``while guard.trained_steps < T`` trains them again, as a framework
        resuming from a checkpoint does, so the final state holds ``T`` steps of training."""
        return self._trained

    @property
    def interventions(self) -> list[Intervention]:
        """Every rollback so far, in order."""
        return list(self._interventions)

    @property
    def diagnosis(self) -> Diagnosis:
        """The doctor's latest verdict."""
        return self.doctor.diagnosis

    @property
    def rolled_back(self) -> bool:
        """``True`` if the last :meth:`step`/:meth:`observe` ended with a rollback."""
        return self._last_rolled_back

    @property
    def snapshot_steps(self) -> list[int]:
        """The guard steps of the snapshots currently kept (oldest first)."""
        return [s.label for s in self._pool()]

    @property
    def snapshot_interval(self) -> int:
        """The current snapshot period: ``snapshot_every``, stretched by the measured snapshot cost."""
        return self._set.interval

    @property
    def storage_path(self) -> str | None:
        """The run's directory (``storage="disk"``), else ``None``."""
        return self._set.disk.dir if self._set.disk is not None else None

    # ------------------------------------------------------------------ driving
    def start(self) -> None:
        """Take the first snapshot (the state before step :attr:`step_count`), or, with
        ``resume=True`` and a manifest on disk, restore the run from it. Idempotent."""
        if self._started:
            return
        self._open_store()
        self._started = True
        self.resumed_from = None
        manifest = self._set.disk.manifest() if self.resume and self._set.disk is not None else None
        if manifest is not None:
            self._resume(manifest)
        else:
            self._take(initial=self.keep_initial)

    def step(self, lr: float, *, val_loss: float | None = None, metrics: Mapping[str, float] | None = None) -> float:
        """Run ``trainer.step(lr * lr_multiplier)``, feed the doctor, maybe roll back.

        ``val_loss`` and ``metrics``: validation results computed before this step (the state it
        starts from), if any, as in :meth:`observe`. Returns the loss the trainer returned for
        this step (``nan`` if it blew up; check :attr:`rolled_back`).
        """
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
            raise ValueError(f"Guard.step: lr must be a finite number >= 0, got {lr!r}")
        if not callable(getattr(self.trainer, "step", None)):
            raise ValueError(f"Guard.step: the trainer ({type(self.trainer).__name__}) has no step(lr) method")
        self.start()
        eff = lr * self._multiplier
        self.before_step(eff)
        if self._spikes is not None and getattr(self.trainer, "skips_steps", False):
            before = self.skipped_count
            loss = self.trainer.step(eff, skip=lambda value: self.skip(value, lr=eff))
            if self.skipped_count > before:
                self._hold(val_loss, metrics)
                return float(loss)
        else:
            loss = self.trainer.step(eff)
        self.observe(loss, lr=eff, val_loss=val_loss, metrics=metrics)
        return float(loss)

    def before_step(self, lr: float | None) -> bool:
        """Tell the guard the LR the next step will train at (after the multiplier), before it runs.

        A sudden raise (:class:`~lrkit.doctor.raise_watch.RaiseWatch`: at least
        :data:`~lrkit.doctor.raise_watch.RAISE_SNAPSHOT` times the LR of the last step observed, not
        in a warmup) after at least ``max(2, K/5)`` healthy steps since the last snapshot gets a
        snapshot of the state before it (see the module docstring). :meth:`step` calls this itself;
        a loop or callback that reports with :meth:`observe` may call it before each step. Returns
        whether a snapshot was taken. An unknown, non-finite or zero LR is ignored.
        """
        self.start()
        if not self._raise_watch.sudden(lr) or self._since < max(2, self._set.interval // 5):
            return False
        self._take(led=self._raise_watch.led(self._since))
        return True

    def observe(
        self,
        loss: float,
        *,
        lr: float | None = None,
        grad_norm: float | None = None,
        val_loss: float | None = None,
        metrics: Mapping[str, float] | None = None,
        step: int | None = None,
    ) -> Intervention | None:
        """Report the loss of one step that was run outside the guard.

        ``val_loss`` and ``metrics`` are passed to :meth:`lrkit.doctor.core.Doctor.observe`
        (validation results computed at this step, if any).

        ``lr`` is the LR actually used (after the multiplier). ``step`` is your number for this
        step (strictly increasing; default: the guard's clock, :attr:`step_count`); the clock
        jumps to ``step + 1`` so that records use your numbering. Snapshots are taken and
        rollbacks done here. Returns the :class:`Intervention` if it rolled back, else ``None``.

        Raises:
            GuardGaveUp: a snapshot was restored ``max_retries`` times and the run failed again
                (the trainer is left restored to the best snapshot).
        """
        self.start()
        if val_loss is None and metrics is None and self._held_val != (None, None):
            val_loss, metrics = self._held_val  # given with a skipped step
        self._held_val = (None, None)
        now = time.perf_counter()
        if self._t_last is not None:
            self._set.note_step(now - self._t_last)
        if step is None:
            step = self._clock
        else:
            if isinstance(step, bool) or not isinstance(step, int) or step < self._clock:
                raise ValueError(
                    f"Guard.observe: step must be an int >= {self._clock} (the next step), got {step!r}"
                )
            if self._clock == 0 and step > 0 and not self._interventions:
                for snap in self._pool():  # the initial snapshot precedes the first step, whatever its number
                    snap.label = step
                self._clock = step
        self._trained += step + 1 - self._clock
        self._clock = step + 1
        self._last_rolled_back = False
        d = self.doctor.observe(step, loss, lr=lr, grad_norm=grad_norm, val_loss=val_loss, metrics=metrics)
        loss_f = float(loss)
        if grad_norm is not None and not math.isfinite(float(grad_norm)):
            loss_f = math.nan  # a non-finite gradient: the state it came from is not healthy
        for snap in self._pool():
            snap.record(step, loss_f, val_loss)
        self._health.add(loss_f)
        # the LR as the doctor took it (an lr not given leaves the doctor's previous one)
        self._raise_watch.note(step, loss_f, self.doctor.current_lr if lr is not None else None)
        if d.verdict not in self.act_on and "diverging" in self.act_on:
            d = self._relapse(step, loss_f) or d
        if d.verdict in self.act_on:
            rec = self._intervene(step, d)
            self._last_rolled_back = True
            self._t_last = time.perf_counter()
            return rec
        self._since = self._since + 1 if d.verdict in _GOOD else 0
        self._good_streak = self._good_streak + 1 if d.verdict in _GOOD else 0
        if self._since >= self._set.interval:
            self._take()
        if self._policy.probation is not None or self._policy.ramp is not None:
            self._policy_tick(step)
        self._t_last = time.perf_counter()
        return None

    def lower_lr(self, reason: str) -> Intervention:
        """Lower the LR multiplier by ``lr_factor`` now, after a rollback that kept it: for a caller
        that learns after the rollback that the LR was the cause (the stability probe of
        :class:`~lrkit.integrations.torch.doctor.TorchDoctor` measuring the restored state beyond its
        stability limit at the LR that failed). The newest :class:`Intervention` is amended
        (``new_multiplier``) and returned; ``reason`` goes to the log.

        Raises:
            ValueError: no intervention yet, or the newest one already changed the LR.
        """
        if not self._interventions or self._interventions[-1].new_multiplier != self._interventions[-1].old_multiplier:
            raise ValueError("Guard.lower_lr: only right after a rollback that kept the LR")
        old = self._multiplier
        self._multiplier = old * self.lr_factor
        rec = dataclasses.replace(self._interventions[-1], new_multiplier=self._multiplier)
        self._interventions[-1] = rec
        self._write_manifest()
        self.logger.warning("lrkit guard: lowered the LR multiplier %.3g -> %.3g after all: %s", old,
                            self._multiplier, reason)
        return rec

    def restart(self, step: int, *, verdict: str, message: str, evidence: Mapping[str, float]) -> Intervention:
        """Restore the initial snapshot on the caller's evidence, not the doctor's (the autopilot's
        early-overfitting restart, :mod:`lrkit.autopilot.overfit`): every later snapshot is dropped
        (they hold the over-trained states), the doctor and the health record start again from
        the initial state's, and the LR multiplier is kept (the caller sets the new LR). Recorded as
        an :class:`Intervention` with ``verdict`` and ``message``; no ``on_intervention`` call, and not
        counted against ``max_retries`` (a restart is no failed attempt of that snapshot).

        Raises:
            SnapshotError: there is no initial snapshot (the guard has not started), or it cannot be read.
        """
        target = self._set.initial
        if target is None:
            raise SnapshotError("lrkit guard: restart needs the initial snapshot; the guard has not started", "")
        state = self._load([target], target)
        if state is None:
            raise SnapshotError("lrkit guard: the initial snapshot could not be read (see the ERROR line)", "")
        self._set.drop_newer(target.label)
        self._set.drop_best()
        self._restore(target, state, rollback=False)
        rec = Intervention(
            step=int(step), verdict=verdict, onset=None, evidence=dict(evidence), old_multiplier=self._multiplier,
            new_multiplier=self._multiplier, restored_to=target.label, before_onset=True, retry=target.restores,
            message=message, verified=True,
        )
        self._interventions.append(rec)
        self._last_rolled_back = True
        self._write_manifest()
        self.logger.warning("lrkit guard: %s at step %d; restored the initial snapshot (step %d)", verdict, step,
                            target.label)
        return rec

    def close(self) -> None:
        """Drop every snapshot and delete the run's files (and the temporary directory the guard
        created). The records stay; a later :meth:`start` begins afresh. Idempotent."""
        self._set.close()
        recycle = getattr(self.trainer, "recycle", None)
        if recycle is not None:
            recycle(None)  # the trainer lets go of the memory it kept for the next snapshot
        self._started = False

    def __enter__(self) -> "Guard":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ snapshots
    def _make_store(self) -> MemoryStore | DiskStore:
        if self.storage == "disk":
            return DiskStore(self._storage_dir, run_id=self._run_id, background=not self.sync_writes)
        return MemoryStore()

    def _open_store(self) -> None:
        # a trainer that can reuse a snapshot's memory gets the ones the store no longer needs
        self._set.open(getattr(self.trainer, "recycle", None))

    def _pool(self) -> list[SnapshotRecord]:
        return self._set.pool()

    def _take(self, initial: bool = False, led: list[tuple[int, float]] | None = None) -> None:
        """Snapshot the trainer; ``led``: the (step, log-loss) of the steps that led to it, when
        the losses after it cannot speak for it (a snapshot before a raise)."""
        t0 = time.thread_time()  # this thread's CPU time: a load spike elsewhere is not the snapshot's cost
        state = self.trainer.snapshot()
        if not self._memory_checked:
            self._memory_checked = True
            where = getattr(self.trainer, "memory_available", None)  # e.g. an accelerator's memory
            self.memory_warning = self._set.memory_warning(state, where() if callable(where) else None)
            if self.memory_warning is not None:
                self.logger.warning("lrkit guard: %s", self.memory_warning)
        h = self._health
        rec = SnapshotRecord(
            label=self._clock, doctor=self.doctor.state_dict(), multiplier=self._multiplier,
            best=h.best, sigma=h.sigma, health=h.state(), lr=self.doctor.current_lr, trained=self._trained,
            pre=[y for _, y in led or ()], pre_steps=[k for k, _ in led or ()],
        )
        self._set.add(rec, state, initial=initial, now=self._clock)
        del state
        self._since = 0
        self._write_manifest()
        cost, step_time = time.thread_time() - t0, self._set.step_time
        if self.agree is not None:  # every process of a distributed run takes the same period
            cost, step_time = (float(v) for v in self.agree([cost, step_time], "mean"))
        self._set.adapt(cost, step_time)

    def _load(self, pool: list[SnapshotRecord], rec: SnapshotRecord) -> Any:
        """The state of ``rec``; on a missing/corrupt file: an ERROR line, ``rec`` leaves the pool, ``None``."""
        return self._set.load(pool, rec, self.logger)

    def _restore(self, rec: SnapshotRecord, state: Any, rollback: bool = False) -> None:
        self.trainer.restore(state)
        self._trained = rec.trained_steps
        failed = self._health.level  # the level the run had come to (nan: none)
        self.doctor.load_state_dict(rec.doctor)
        if rollback and self.doctor.n_observations < self.doctor.config["flat_steps"]:
            # restored into the doctor's opening stretch (its "since the start" judgements: flat,
            # stuck after an unstable start) at a new LR: the restored point is the start, or slow
            # progress at the lowered LR would be judged against losses taken at the failed one
            self.doctor.restart()
        self._health.load(rec.health)
        rec.closed = True  # losses from now on are at another LR: they do not re-verify it
        self._since = self._good_streak = 0
        if self._spikes is not None:
            self._spikes.reset()  # another state: its level is learnt again
        if rollback:  # the restored state's level is the reference until a new snapshot is verified
            self._relapse_watch.arm(best=rec.best if math.isfinite(rec.best) else self._health.best, label=rec.label,
                                    start=self._health.start, failed=failed, sigma=rec.sigma, at=self._clock,
                                    min_rise=self._relapse_min_rise())

    def _cut(self, step: int, d: Diagnosis, target: SnapshotRecord, untried: bool) -> float:
        """The factor the LR multiplier is multiplied by (:mod:`lrkit.doctor.lr_policy`).

        The held raise :math:`r`: the doctor said so (``lr_rise``), or the run diverged under a raise
        still held that the restored snapshot predates (an LR raised 30x at step ``s`` goes back to
        its old value, not to 3x it; 1000x likewise: the LR before the raise is known to have
        trained)."""
        r = d.evidence.get("lr_rise", math.nan)
        if not math.isfinite(r) or r < 1.5:
            sign = self.doctor.signs.get("lr_held")
            held = sign.held_raise() if sign is not None else None
            r = held[1] if held is not None and held[0] >= target.label else math.nan
        last = self._interventions[-1] if self._interventions else None
        return self._policy.factor(
            step=step, onset=d.step if d.step is not None else step, target=target.label,
            untried=untried, interval=self._set.interval, held_raise=r if math.isfinite(r) else None,
            last=None if last is None else (last.step, last.restored_to, last.new_multiplier == last.old_multiplier),
            multiplier=self._multiplier, evidence_free=untried and self._evidence_free(d),
        )

    @staticmethod
    def _evidence_free(d: Diagnosis) -> bool:
        """A NaN with nothing against the LR before it: no blow-up dated to the first window, no run
        stuck since one (a bad batch looks so; a hopeless LR too, and the replay tells them apart)."""
        return d.verdict == "nan" and not unstable_start(d.evidence)

    def _untried(self, step: int, d: Diagnosis, target: SnapshotRecord) -> bool:
        """The rollback goes to a start the run has not shown it trains from at this LR: ``target``
        is the initial state and no snapshot taken before the onset was passed over (the policy's
        *untried* start: not forgiven), unless the run trained a healthy stretch from it before the problem -- at least
        :data:`~lrkit.doctor.snapshots.LEVEL` good verdicts in a row before this step, an onset at
        least as many steps after the start, its level
        (:class:`~lrkit.doctor.snapshots.HealthTracker`) fell under its start, and the doctor
        dates no blow-up to its first window nor a run stuck since one. The first
        snapshot comes after ``snapshot_every`` good steps (50 by default, stretched up to 10x for a
        model whose copy is slow): without the stretch rule a bad batch in the first 50 (to 500)
        steps of a healthy run cut its LR 10x for good (a NaN batch at step 30 of a 200-step Adam
        run on the digits: validation loss 0.40 -> 1.85)."""
        if target is not self._set.initial:
            return False
        onset = d.step if d.step is not None else step
        if any(s is not target and s.label < onset for s in self._pool()):
            return True  # a snapshot from before the onset was passed over: the trouble is older than it
        h = self._health
        learned = math.isfinite(h.best) and math.isfinite(h.start) and h.best < h.start
        return unstable_start(d.evidence) or not learned or min(self._good_streak, onset - target.label) < LEVEL

    def _healthy_since(self, label: int) -> bool:
        """A rolling snapshot taken after step ``label`` exists and the newest one is verified healthy."""
        newer = [s for s in self._set.rolling if s.label > label]
        return bool(newer) and bool(newer[-1].healthy(self.tolerance))

    def _policy_tick(self, step: int) -> None:
        """A lowering on probation may be undone (:meth:`LRPolicy.tick`)."""
        m = self._policy.tick(step, multiplier=self._multiplier, healthy_since=self._healthy_since)
        if self._policy.note is not None:
            self._write_manifest()
            self.logger.warning("lrkit guard: %s", self._policy.note)
        if m is not None:
            self._multiplier = m
            if self._policy.ramp is None:
                self._write_manifest()
                # the LR is back where the trouble was: a return to the level the run failed to
                # is the LR's doing, whatever the doctor (restarted, or blind in a noisy run) says
                self._relapse_watch.arm(best=self._health.best, label=self._clock, start=self._health.start,
                                        sigma=self._health.sigma, at=self._clock, min_rise=self._relapse_min_rise())

    def _relapse_min_rise(self) -> float:
        """The least rise of the loss a relapse needs: the doctor's ``min_rise`` times the run's
        starting loss (its first losses' median, kept across rollbacks; 0 before it is known)."""
        start = self._health.start
        return self.doctor.config["min_rise"] * math.exp(start) if math.isfinite(start) else 0.0

    def _relapse(self, step: int, loss: float) -> Diagnosis | None:
        """A relapse right after a rollback (:class:`~lrkit.doctor.relapse.RelapseWatch`)."""
        return self._relapse_watch.check(step, loss, self._health.recent, self._healthy_since, self._health.best)

    # ------------------------------------------------------------------ rollback
    def _intervene(self, step: int, d: Diagnosis) -> Intervention:
        onset = d.step if d.step is not None else step
        pool = self._pool()
        while True:
            if not pool:
                raise SnapshotError(
                    f"lrkit guard: {d.verdict} at step {step} and no snapshot could be read (see the ERROR lines)", ""
                )
            # an LR raised and held (evidence lr_rise; the onset is the raise): every later state was
            # trained under the raise the rollback undoes -- a state from before it will do.
            # stuck (the loss has not decreased since the onset: units died at a blow-up): every later
            # state is the dead one, and the losses after it -- the dead level is the best there is --
            # vouch for it; only a state from before the onset will do
            before = d.evidence.get("stuck") or d.evidence.get("lr_rise")
            live = [r for r in pool if r.label <= onset] if before else pool
            target, verified = choose_target(live or pool, self.tolerance, onset, reference=self.doctor.best_level(),
                                             lr_ceiling=self.doctor.config.get("lr_ceiling"))
            if target.restores >= self.max_retries:
                self._give_up(step, d, target, pool)
            state = self._load(pool, target)
            if state is not None:
                break
        untried = self._untried(step, d, target)  # before the newer snapshots go
        self._set.drop_newer(target.label)  # suspect: newer than the target
        best = self._set.best
        if d.evidence.get("stuck") and best is not None and best.label > onset and best is not target:
            # the best state seen, taken while stuck, is the dead one too: not kept to restore later
            self._set.drop_best()
        target.cut(onset)  # the restored timeline's own losses no longer speak for it
        cut = self._cut(step, d, target, untried)  # before the doctor is rewound to the snapshot's state
        self._restore(target, state, rollback=True)
        if not (untried and cut == 1.0):  # a NaN at an untried start forgiven once is a free replay
            target.restores += 1
        old = self._multiplier
        self._multiplier = old * cut
        rec = Intervention(
            step=step, verdict=d.verdict, onset=d.step, evidence=dict(d.evidence), old_multiplier=old,
            new_multiplier=self._multiplier, restored_to=target.label, before_onset=target.label < onset,
            retry=target.restores, message=d.message, verified=verified,
        )
        self._interventions.append(rec)
        self._write_manifest()
        if cut != 1.0:
            what = f"lowered the LR multiplier {old:.3g} -> {self._multiplier:.3g}"
        elif untried:
            what = (f"kept the LR multiplier at {old:.3g} (a NaN at the start with no blow-up before it: a bad "
                    "batch as likely as the LR; one replay tells them apart, another problem from the start "
                    "will lower it)")
        else:
            what = (f"kept the LR multiplier at {old:.3g} (a first problem out of a healthy run: a bad batch or "
                    "state is likelier than the LR; a second one soon will lower it)")
        self.logger.warning(
            "lrkit guard: %s at step %d (onset %s); restored the snapshot of step %d%s and %s (%s)",
            d.verdict, step, d.step, target.label, "" if verified else " (no snapshot was verified healthy)",
            what, f"retry {rec.retry} of {self.max_retries}" if rec.retry else "a free replay, not a retry",
        )
        if self.on_intervention is not None:
            self.on_intervention(rec)
        return rec

    def _give_up(self, step: int, d: Diagnosis, target: SnapshotRecord, pool: list[SnapshotRecord]) -> None:
        """Restore the best snapshot (else ``target``) and raise :class:`GuardGaveUp`."""
        while True:
            best, by, value = best_snapshot(pool, self.tolerance)
            chosen = best if best is not None else target
            state = self._load(pool, chosen)
            if state is not None:
                break
            if not pool:
                raise SnapshotError(f"lrkit guard gave up at step {step} and no snapshot could be read", "")
            target = pool[0]
        self._restore(chosen, state)
        what = (f"the best snapshot seen (step {chosen.label}, {by} {value:.4g})" if best is not None
                else f"the snapshot of step {chosen.label} (none was verified healthy)")
        msg = (
            f"lrkit guard gave up at step {step}: {d.verdict} again after restoring the snapshot of "
            f"step {target.label} {target.restores} times (max_retries={self.max_retries}); the LR "
            f"multiplier is {self._multiplier:.3g}. The trainer is restored to {what}. "
            f"Last diagnosis: {d.message}"
        )
        self.logger.error(msg)
        raise GuardGaveUp(msg, d, self._interventions, chosen.label, by, value)


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"Guard: {name} must be an int >= {low}, got {value!r}")


def _check_number(name: str, value: Any, ok: Callable[[float], bool], allowed: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"Guard: {name} must be {allowed}, got {value!r}")
