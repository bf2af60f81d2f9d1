r"""The gradient norm of a step taken under a loss scaler (fp16 mixed precision).

A ``torch.amp.GradScaler`` multiplies the loss by a scale :math:`s` before ``backward`` so that
small float16 gradients do not flush to zero. When :math:`s` is too large some scaled gradient
overflows float16; the scaler then *skips* that optimizer step and halves :math:`s`. That is its
normal work, not a fault of the run: a new scaler (default :math:`s = 2^{16}`) overflows on the
first steps of a large model until :math:`s` has come down, and every ``growth_interval`` (2000)
steps it doubles :math:`s` and usually overflows once. On those steps the gradient norm a loop, a
Lightning hook or the Hugging Face ``Trainer``'s log reads is ``inf`` or ``nan``, yet no weight
changed and the loss is finite.

The doctor's ``nan`` verdict is for a run whose numbers went non-finite; fed these steps it rolled
back healthy fp16 runs and gave up on them. :func:`scaled_grad_norm` reads such a step's gradient
norm as unknown. The one exception is a scale already below :data:`MIN_LOSS_SCALE`: then the
gradients overflow even unscaled, the scaler skips every step, and the run trains no more -- that
is reported (the ``nan`` verdict, with its advice to lower the LR or use bf16).
"""
from __future__ import annotations

import math
from typing import Any

#: a loss scale under which a non-finite gradient is the run's, not the scaler's calibration: the
#: gradients overflow float16 without any scaling (the minimum loss scale of DeepSpeed and Megatron-LM)
MIN_LOSS_SCALE = 1.0


def loss_scale(scaler: Any) -> float | None:
    """The current scale of an enabled ``torch.amp.GradScaler`` (Accelerate's and Lightning's are
    one), ``None`` without one or when it is disabled.

    Example:
        >>> import torch
        >>> loss_scale(torch.amp.GradScaler("cpu", init_scale=1024.0)), loss_scale(None)
        (1024.0, None)
    """
    if scaler is None:
        return None
    enabled = getattr(scaler, "is_enabled", None)
    if callable(enabled) and not enabled():
        return None
    get = getattr(scaler, "get_scale", None)
    return float(get()) if callable(get) else None


def scaled_grad_norm(gn: float | None, scaler: Any) -> float | None:
    r"""The gradient norm the doctor should read for a step: ``None`` for a non-finite norm under
    an enabled loss scaler whose scale is still at least :data:`MIN_LOSS_SCALE` (the scaler skips
    that step: see the module docstring), ``gn`` itself otherwise. Read the scale after the
    scaler's ``update()`` (a skipped step has halved it).

    Example:
        >>> import torch
        >>> scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
        >>> scaled_grad_norm(float("inf"), scaler), scaled_grad_norm(0.5, scaler), scaled_grad_norm(float("nan"), None)
        (None, 0.5, nan)
        >>> scaled_grad_norm(float("inf"), torch.amp.GradScaler("cpu", init_scale=0.5))   # below 1: the run's
        inf
    """
    if gn is None or math.isfinite(gn):
        return gn
    scale = loss_scale(scaler)
    return None if scale is not None and scale >= MIN_LOSS_SCALE else gn
