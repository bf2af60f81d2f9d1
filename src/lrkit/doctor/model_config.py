r"""What a model's saved configuration says about its loss: the *chance level*.

A classifier that has learned nothing predicts the label prior; with cross-entropy over :math:`K`
balanced classes its loss is :math:`\ln K` (:math:`\ln 2 = 0.693` for two). The Doctor uses it,
when known, to tell a run that blew up and collapsed to chance from one that is learning
(:mod:`lrkit.doctor.signs.chance`). Read from a Hugging Face ``config.json`` (written beside every
checkpoint's ``trainer_state.json``, or the model's ``config`` live): a ``*ForSequenceClassification``,
``*ForTokenClassification``, ``*ForImageClassification`` or ``*ForAudioClassification`` model with
``num_labels >= 2`` (``id2label``'s size; neither written means the library's default, 2) and a
single-label problem. Anything else (regression, multi-label, language
models, whose collapsed loss is the unigram entropy, not :math:`\ln V`) has no chance level here.

Example:
    >>> round(chance_loss_from_config({"architectures": ["BertForSequenceClassification"],
    ...                                "id2label": {"0": "neg", "1": "pos"}}), 3)
    0.693
    >>> chance_loss_from_config({"architectures": ["GPT2LMHeadModel"], "vocab_size": 50257}) is None
    True
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

__all__ = ["chance_loss_from_config", "chance_loss_near"]

_CLASSIFIERS = ("ForSequenceClassification", "ForTokenClassification", "ForImageClassification",
                "ForAudioClassification")


def chance_loss_from_config(config: Mapping[str, Any]) -> float | None:
    """:math:`\\ln K` for a single-label classifier's configuration (a ``config.json`` as a dict,
    or ``model.config.to_dict()``), else ``None``."""
    archs = config.get("architectures") or []
    if not any(isinstance(a, str) and a.endswith(_CLASSIFIERS) for a in archs):
        return None
    if config.get("problem_type") not in (None, "single_label_classification"):
        return None
    k = config.get("num_labels")
    if k is None and isinstance(config.get("id2label"), Mapping):
        k = len(config["id2label"])
    if k is None:  # transformers writes neither for its default of two labels
        k = 2
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        return None
    return math.log(k)


def chance_loss_near(log_path: str | Path) -> float | None:
    """The chance level of the model a Hugging Face ``trainer_state.json`` belongs to: from the
    ``config.json`` beside it, else in its output directory (``None`` if there is none, it cannot
    be read, or the model is not a single-label classifier)."""
    p = Path(log_path)
    for folder in (p.parent, p.parent.parent):
        cfg = folder / "config.json"
        if cfg.is_file():
            try:
                obj = json.loads(cfg.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            return chance_loss_from_config(obj) if isinstance(obj, Mapping) else None
    return None
