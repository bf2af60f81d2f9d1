"""A real Doctor that also records what each observation carried (for the integration tests)."""
from __future__ import annotations

from lrkit.doctor import Doctor


class RecordingDoctor(Doctor):
    """Keeps ``(step, val_loss, metrics)`` of every observation in :attr:`seen`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def observe(self, step, loss, **kw):
        self.seen.append((step, kw.get("val_loss"), dict(kw.get("metrics") or {})))
        return super().observe(step, loss, **kw)

    def carried(self):
        """The observations that carried a validation loss."""
        return [(s, v, m) for s, v, m in self.seen if v is not None]
