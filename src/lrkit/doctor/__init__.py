"""The LR doctor: online diagnosis of a training run, log readers and ``diagnose``.

Pure core (NumPy only). :class:`Doctor` watches a run one observation at a time;
:func:`diagnose` runs it over a whole log read by :func:`read_log` (CSV, JSONL, JSON,
TensorBoard, Keras ``History``, Lightning ``metrics.csv``, MLflow runs).

Example:
    >>> from lrkit.doctor import diagnose
    >>> diagnose({"step": [0, 1, 2, 3], "loss": [2.3, 1.9, float("nan"), 1.2]}).verdict
    'nan'
"""
from lrkit.doctor.core import INFORMATIONAL, SEVERITY, VERDICTS, Diagnosis, Doctor
from lrkit.doctor.diagnosis import default_window, diagnose, diagnose_runs, doctor_settings, overall, run_doctor
from lrkit.doctor.guard import Guard, GuardGaveUp, Intervention
from lrkit.doctor.logs import ALIASES, LogFormatError, LogRecords, find_runs, read_log, read_runs

__all__ = [
    "Guard",
    "GuardGaveUp",
    "Intervention",
    "VERDICTS",
    "INFORMATIONAL",
    "SEVERITY",
    "Diagnosis",
    "Doctor",
    "diagnose",
    "diagnose_runs",
    "doctor_settings",
    "overall",
    "run_doctor",
    "default_window",
    "read_log",
    "read_runs",
    "find_runs",
    "LogRecords",
    "LogFormatError",
    "ALIASES",
]
