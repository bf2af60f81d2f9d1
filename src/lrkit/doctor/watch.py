"""What every watcher of a live run says: each detection once, the worst one, a summary at the end.

:class:`SpeakingWatch` is mixed into every watcher that owns a ``doctor`` and an optional
``guard`` (the Keras, Lightning and Hugging Face callbacks and
:class:`~lrkit.integrations.torch.doctor.TorchDoctor`, through
:class:`~lrkit.doctor.guard.GuardedWatch`). A watcher feeds each step with :meth:`_watch_observe`,
which

* passes the step to the guard (or to the doctor when watching only);
* turns what the doctor cannot take into evidence instead of an exception in the user's
  training: a non-finite or negative LR is passed as unknown (``lr=None``), and a value the
  doctor refuses is logged once and that step skipped; the ``nan`` verdict still comes from a
  non-finite loss, gradient norm or validation loss;
* records every new problem in :attr:`~SpeakingWatch.detections` (a verdict with its onset is
  recorded once, however many steps it lasts) and logs it once, with its step, verdict, message
  and advice, on the ``lrkit.doctor`` logger when Python logging is configured, else on the
  framework's own console (Keras' progress bar, Lightning's and Hugging Face's loggers; see
  :meth:`SpeakingWatch._watch_emit`) (a rollback is logged by the guard itself, as a WARNING on
  ``lrkit.guard``, and recorded here without a second line);
* keeps :attr:`~SpeakingWatch.worst`, the most severe detection (the earliest among equals),
  beside the current :attr:`diagnosis`: a run that blew up and later recovered still names its
  problem at the end.

:meth:`SpeakingWatch.summary` is the one-paragraph account the callbacks log when training
ends (a WARNING when a problem was seen, INFO otherwise).

**Acting on the informational verdicts.** The doctor's ``converged`` (the validation metric
stopped improving: Keras ``EarlyStopping``'s signal, with the Doctor's ``converge_patience`` and
``converge_min_delta``) and ``overfitting`` notes never trigger a rollback. A callback built with
``on_converged=`` / ``on_overfitting=`` ``"stop"`` stops training when the note appears, and with
``"lower_lr"`` multiplies the LR by ``plateau_factor`` (default 0.1, as Keras'
``ReduceLROnPlateau``) once per appearance (the note must clear, i.e. the metric improve, before
it acts again).

Example:
    >>> import logging
    >>> from lrkit.doctor import Doctor
    >>> class Watch(SpeakingWatch):
    ...     def __init__(self):
    ...         self.doctor, self.guard = Doctor(window=5), None
    >>> w = Watch()
    >>> for step, loss in enumerate([2.0, 1.8, float("nan"), 1.5]):
    ...     _ = w._watch_observe(step, loss, lr=float("nan"))   # a NaN LR: evidence, not a crash
    >>> [(d.verdict, d.step) for d in w.detections], w.worst.verdict
    ([('nan', 2)], 'nan')
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Mapping

from lrkit.doctor.core import SEVERITY, Diagnosis, Doctor

__all__ = ["SpeakingWatch", "check_actions"]

ACTIONS = ("stop", "lower_lr")


def check_actions(who: str, on_converged: Any, on_overfitting: Any, plateau_factor: Any) -> dict[str, str]:
    """Validate the ``on_converged`` / ``on_overfitting`` options; ``{note: action}``.

    Example:
        >>> check_actions("MyCallback", "stop", None, 0.1)
        {'converged': 'stop'}
    """
    out = {}
    for note, action in (("converged", on_converged), ("overfitting", on_overfitting)):
        if action is None:
            continue
        if action not in ACTIONS:
            raise ValueError(f"{who}: on_{note} must be 'stop', 'lower_lr' or None, got {action!r}")
        out[note] = action
    ok = isinstance(plateau_factor, (int, float)) and not isinstance(plateau_factor, bool)
    if not ok or not 0 < plateau_factor < 1:
        raise ValueError(f"{who}: plateau_factor must be a number in (0, 1), got {plateau_factor!r}")
    return out

_LOG = logging.getLogger("lrkit.doctor")


def _clean_lr(lr: Any) -> float | None:
    """The LR as the doctor takes it: ``None`` when unknown, non-finite or negative."""
    if lr is None:
        return None
    try:
        v = float(lr)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v >= 0 else None


def describe(d: Diagnosis, step: int | None = None) -> str:
    """One line: ``"step 12: DIVERGING (from step 9): <message> Advice: a; b."``."""
    at = d.detected_at if step is None else step
    onset = f" (from step {d.step})" if d.step is not None and d.step != at else ""
    tips = "; ".join(d.advice)
    return f"step {at}: {d.verdict.upper()}{onset}: {d.message}" + (f" Advice: {tips}." if tips else "")


class SpeakingWatch:
    """Detections, the worst one and a spoken summary, shared by every watcher (see the module).

    Subclasses set ``self.doctor`` and ``self.guard``; they may set ``self.watch_logger`` (a
    :class:`logging.Logger`, default ``logging.getLogger("lrkit.doctor")``) and
    ``self.watch_speaks`` (``False`` on the non-zero ranks of a distributed run).
    """

    doctor: Doctor
    guard: Any

    # ------------------------------------------------------------------ state (created lazily)
    def _watch_state(self) -> dict[str, Any]:
        st = self.__dict__.get("_watch")
        if st is None:
            st = {"detections": [], "seen": set(), "refused": {}}  # refused: reason -> [first step, count]
            self.__dict__["_watch"] = st
        return st

    @property
    def detections(self) -> list[Diagnosis]:
        """Every problem (and informational finding) seen, in order, each once (with its onset
        ``step`` and ``detected_at``), including the ones the guard rolled back."""
        return self._watch_state()["detections"]

    @property
    def worst(self) -> Diagnosis:
        """The most severe detection (the earliest among equals), or the current diagnosis when
        there has been none. A ``flat`` verdict is a judgement of the run *so far* (no progress
        yet): one the run has since left (its loss decreased) is not counted, as in
        :func:`~lrkit.doctor.diagnosis.diagnose`."""
        now = self.doctor.diagnosis
        dets = self._counted()
        if not dets:
            return now
        return max(dets, key=lambda d: (SEVERITY.get(d.verdict, 0), -dets.index(d)))

    def _counted(self) -> list[Diagnosis]:
        """The detections that still count (a ``flat`` one only while the run is still flat)."""
        flat_now = self.doctor.diagnosis.verdict == "flat"
        return [d for d in self.detections if d.verdict != "flat" or flat_now]

    def _watch_reset(self) -> None:
        """Forget the detections (a fresh run)."""
        self.__dict__.pop("_watch", None)

    # ------------------------------------------------------------------ feeding
    def _watch_observe(self, step: int, loss: float, *, lr: Any = None, grad_norm: float | None = None,
                       val_loss: float | None = None, metrics: Mapping[str, float] | None = None) -> Any:
        """Feed one step to the guard (or the doctor); record and log what is new.

        Returns the guard's :class:`~lrkit.doctor.guard.Intervention` when it rolled back, else
        ``None``. :class:`~lrkit.doctor.guard.GuardGaveUp` propagates (after its diagnosis is
        recorded); a value the doctor refuses is logged once and the step skipped.
        """
        from lrkit.doctor.interventions import GuardGaveUp

        lr_c = _clean_lr(lr)
        if lr is not None and lr_c is None:
            self.doctor.forget_lr()  # logged but not a number: no message may quote the last good one
        if grad_norm is not None and not (isinstance(grad_norm, (int, float)) and (grad_norm >= 0 or grad_norm != grad_norm)):
            grad_norm = None  # a negative "norm" is not one
        try:
            if self.guard is None:
                self.doctor.observe(step, loss, lr=lr_c, grad_norm=grad_norm, val_loss=val_loss, metrics=metrics)
                rec = None
            else:
                rec = self.guard.observe(loss, lr=lr_c, grad_norm=grad_norm, val_loss=val_loss, metrics=metrics,
                                         step=step)
        except GuardGaveUp as exc:
            self._watch_note(exc.diagnosis, speak=False)  # the guard logged an ERROR line
            raise
        except (ValueError, TypeError) as exc:
            self._watch_refused(step, exc)
            return None
        self._watch_act_on_notes(self.doctor.diagnosis, step)
        if rec is not None:  # the guard logged it; a watcher may have kept the doctor's own verdict
            d = getattr(self, "_rollback_diagnosis", None)
            acted = self._from_intervention(rec)
            if d is not None and d.verdict != "healthy":  # its reading, with what the guard did as the advice
                acted = dataclasses.replace(d, advice=acted.advice)
            self._watch_note(acted, speak=False)
        else:
            self._watch_note(self.doctor.diagnosis, step=step)
        return rec

    @staticmethod
    def _from_intervention(rec: Any) -> Diagnosis:
        advice = (f"rolled back to the state before step {rec.restored_to}; LR multiplier now {rec.new_multiplier:.3g}",)
        return Diagnosis(rec.verdict, rec.onset, rec.step, dict(rec.evidence), advice, rec.message)

    def _watch_note(self, d: Diagnosis, *, speak: bool = True, step: int | None = None) -> bool:
        """Record ``d`` if it is a new finding (verdict, onset); log it once. Returns whether it was new."""
        if d.verdict == "healthy":
            return False
        st = self._watch_state()
        key = (d.verdict, d.step)
        if key in st["seen"]:
            return False
        st["seen"].add(key)
        st["detections"].append(d)
        if speak and getattr(self, "watch_speaks", True):
            level = logging.INFO if SEVERITY.get(d.verdict, 0) <= SEVERITY.get("healthy", 0) else logging.WARNING
            self._watch_emit(level, f"lrkit doctor at {describe(d, step)}")
        return True

    def _watch_act_on_notes(self, d: Diagnosis, step: int) -> None:
        """Stop or lower the LR when a ``converged``/``overfitting`` note appears (``watch_on``)."""
        on = getattr(self, "watch_on", None)
        if not on:
            return
        st = self._watch_state()
        active = st.setdefault("notes", set())
        notes = set(getattr(d, "notes", ()) or ())
        active &= notes  # a note that cleared may act again when it comes back
        for note in sorted(notes - active):
            active.add(note)
            action = on.get(note)
            if action is None:
                continue
            if action == "stop":
                done = self._watch_stop()
                what = "stopping training"
            else:
                factor = getattr(self, "plateau_factor", 0.1)
                done = self._watch_lower_lr(factor)
                what = f"lowering the LR {1 / factor:.3g}x"
            if getattr(self, "watch_speaks", True):
                if done:
                    self._watch_logger().warning("lrkit doctor at step %d: %s (on_%s=%r): %s", step, what, note,
                                                 action, d.message if d.verdict == note else note)
                else:
                    self._watch_logger().warning("lrkit doctor at step %d: %s, but this run's LR cannot be lowered "
                                                 "from the callback; nothing done", step, note)

    def _watch_stop(self) -> bool:  # pragma: no cover - every watcher with watch_on overrides it
        return False

    def _watch_lower_lr(self, factor: float) -> bool:  # pragma: no cover - idem
        return False

    def _watch_refused(self, step: int, exc: Exception) -> None:
        """A step the doctor refused: said once per reason, counted for the summary."""
        st = self._watch_state()
        kind = str(exc).split(",")[0]
        seen = st["refused"].setdefault(kind, [step, 0])
        seen[1] += 1
        if seen[1] > 1:
            return
        if getattr(self, "watch_speaks", True):
            self._watch_logger().warning("lrkit doctor: step %d skipped (training goes on; later steps refused for "
                                         "the same reason are skipped too, counted in the summary): %s", step, exc)

    def _unwatched(self) -> str:
        """The summary's account of the steps the doctor refused, if any."""
        parts = [f"{n} step{'s' if n > 1 else ''} from step {first} ({kind.removeprefix('Doctor.observe: ')})"
                 for kind, (first, n) in self._watch_state()["refused"].items()]
        return f" Not watched: {'; '.join(parts)}." if parts else ""

    def _watch_logger(self) -> logging.Logger:
        return getattr(self, "watch_logger", None) or _LOG

    def _watch_emit(self, level: int, text: str) -> None:
        """Say ``text``: on the watch's Python logger when logging is configured for it (a handler
        on it or an ancestor); otherwise on the framework's own console (:meth:`_watch_echo`: the
        Keras progress bar, Lightning's and Hugging Face's loggers), where the user is looking --
        unconfigured Python logging would only print a bare line on stderr. Never both: a
        message is said once."""
        logger = self._watch_logger()
        if not logger.hasHandlers() and self._watch_echo(level, text):
            return
        logger.log(level, "%s", text)

    def _watch_echo(self, level: int, text: str) -> bool:
        """Print ``text`` on the framework's own console; ``False`` where there is none."""
        return False

    # ------------------------------------------------------------------ the end
    def summary(self) -> str:
        """An account of the run so far: the worst problem seen (even if the run recovered),
        how many detections, and the current verdict."""
        worst, now, dets = self.worst, self.doctor.diagnosis, self._counted()
        problems = [d for d in dets if SEVERITY.get(d.verdict, 0) > SEVERITY.get("healthy", 0)]
        rollbacks = len(self.guard.interventions) if self.guard is not None else 0
        if not problems:
            notes = "".join(f" {describe(d)}" for d in dets)
            n, needed = self.doctor.n_observations, self.doctor.observations_needed
            few = (f" (too few to judge a flat or fluctuating loss, which takes {needed}: only a NaN or a blow-up "
                   "could show)" if n < needed else "")
            return (f"lrkit doctor: no problem seen after {n} observation{'' if n == 1 else 's'}{few}.{notes}"
                    + self._unwatched())
        more = (f" ({len(problems)} problem{'s' if len(problems) > 1 else ''} detected"
                + (f", {rollbacks} rolled back" if rollbacks else "") + ")")
        end = "still " + now.verdict.upper() if now.verdict == worst.verdict else f"now {now.verdict.upper()}"
        return f"lrkit doctor: the worst problem seen was at {describe(worst)}{more}; {end}." + self._unwatched()

    def _watch_speak_summary(self) -> None:
        if not getattr(self, "watch_speaks", True):
            return
        problems = any(SEVERITY.get(d.verdict, 0) > SEVERITY.get("healthy", 0) for d in self._counted())
        self._watch_emit(logging.WARNING if problems else logging.INFO, self.summary())
