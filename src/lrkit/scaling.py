"""Rules of thumb, made executable: optimizer-aware defaults, range-test bounds, batch-size scaling.

Everything here is a pure function (standard library only). An optimizer can be named by a string
(``"adam"``, ``"sgd_momentum"``, ...) or passed as an object from any framework: it is recognised by
its class name (``torch.optim.AdamW``, ``keras.optimizers.RMSprop``, ``prodigyopt.Prodigy``, ...)
and, for SGD, by whether it uses momentum; the same update stored or computed another way is the same
family (bitsandbytes' ``PagedAdamW8bit`` and ``Lion8bit``, torchao's ``AdamW4bit``, apex's and
DeepSpeed's ``FusedAdam``, ``DeepSpeedCPUAdam``). An optimizer *factory function* (optax's ``optax.adamw``,
or ``functools.partial(optax.sgd, momentum=0.9)``) is recognised by the function's name.

Families and their rule-of-thumb learning rates:

============  ==========  ====================  ==================================================
family        default LR  range-test bounds     source of the default
============  ==========  ====================  ==================================================
sgd           1e-2        1e-7 .. 10            common default; Bottou, "SGD tricks" (2012)
sgd_momentum  1e-2        1e-7 .. 10            0.1 at batch 256 for ResNets (He et al. 2016) scaled
                                                to small batches by the linear rule ~ 1e-2
adam          1e-3        1e-7 .. 1             Kingma & Ba, "Adam" (2015), Algorithm 1
adamw         1e-3        1e-7 .. 1             Loshchilov & Hutter, "Decoupled Weight Decay" (2019)
rmsprop       1e-3        1e-7 .. 1             Hinton, Coursera lecture 6e (2012); Keras default
adagrad       1e-2        1e-6 .. 10            Duchi et al. (2011); PyTorch default
adadelta      1.0         1e-3 .. 100           Zeiler, "ADADELTA" (2012): no LR in the paper (=1)
lion          1e-4        1e-8 .. 0.1           Chen et al., "Symbolic Discovery..." (2023): 3-10x
                                                smaller than AdamW
muon          2e-2        1e-6 .. 10            Jordan et al., "Muon" (2024): 0.02 with the update
                                                scaled by sqrt(max(1, fan_out/fan_in)) (torch's
                                                Muon default adjustment; optax.contrib.muon)
muon_adamw    1e-3        1e-7 .. 1             Liu et al., "Muon is Scalable for LLM Training"
                                                (2025): the update scaled to AdamW's RMS (0.2
                                                sqrt(max(A, B))) reuses AdamW's LR (torch
                                                ``adjust_lr_fn="match_rms_adamw"``, Keras' Muon)
lr_free       1.0         1e-3 .. 100           Prodigy (Mishchenko & Defazio 2023), D-Adaptation
                                                (Defazio & Mishchenko 2023): lr is a multiplier, 1.0
============  ==========  ====================  ==================================================

Muon orthogonalises the update of each weight matrix and is paired with an Adam-like optimizer for
the other parameters (in Keras and optax inside one optimizer; in PyTorch as two, which
:func:`lrkit.torch.combine` joins): a combination of optimizers is in the family of the first one
(the one whose LR lrkit reads and ramps; the others keep their ratio to it).

Schedule-Free optimizers (Defazio et al., "The Road Less Scheduled", 2024) remove the schedule, not
the learning rate: Schedule-Free AdamW (``AdamWScheduleFree``, Keras' ``ScheduleFreeAdamW``) is in
the ``adamw`` family (its reference default, 2.5e-3, lies in that range); Schedule-Free SGD, whose
reference default is 1.0 and which wants LRs far above plain SGD's, is grouped with ``lr_free`` for
its default and range (1.0, 1e-3 .. 100).

Batch-size scaling. When the batch size changes from :math:`B_0` to :math:`B_1`:

.. math::

    \\eta_1 = \\eta_0 \\cdot \\frac{B_1}{B_0} \\quad\\text{(linear rule)},\\qquad
    \\eta_1 = \\eta_0 \\cdot \\sqrt{\\frac{B_1}{B_0}} \\quad\\text{(square-root rule)}

The linear rule holds for SGD (with or without momentum) up to large batches, and needs a gradual
warmup when the batch grows a lot (Goyal et al., "Accurate, Large Minibatch SGD", 2017: 5 epochs
of linear warmup). The square-root rule is the one that follows from the SDE view of adaptive
methods (Malladi et al., "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms", 2022;
Krizhevsky, "One weird trick", 2014; Hoffer et al. 2017), so ``rule="auto"`` picks linear for SGD
and square root for Adam-like optimizers. Learning-rate-free optimizers are not rescaled.

Example:
    >>> default_lr("adam")
    0.001
    >>> scale_lr(0.1, from_batch_size=256, to_batch_size=1024, rule="linear")
    0.4
    >>> scale_lr(1e-3, 64, 256, family="adam")  # auto: square root for Adam
    0.002
"""
from __future__ import annotations

import functools
import math
import types
from typing import Any

__all__ = [
    "FAMILIES",
    "optimizer_family",
    "lr_ignored",
    "default_lr",
    "lr_range",
    "scale_lr",
    "scaling_rule",
    "warmup_steps_for",
]

FAMILIES = (
    "sgd",
    "sgd_momentum",
    "adam",
    "adamw",
    "rmsprop",
    "adagrad",
    "adadelta",
    "lion",
    "muon",
    "muon_adamw",
    "lr_free",
    "unknown",
)

_DEFAULT_LR = {
    "sgd": 1e-2,
    "sgd_momentum": 1e-2,
    "adam": 1e-3,
    "adamw": 1e-3,
    "rmsprop": 1e-3,
    "adagrad": 1e-2,
    "adadelta": 1.0,
    "lion": 1e-4,
    "muon": 2e-2,
    "muon_adamw": 1e-3,
    "lr_free": 1.0,
    "unknown": 1e-3,
}

_LR_RANGE = {
    "sgd": (1e-7, 10.0),
    "sgd_momentum": (1e-7, 10.0),
    "adam": (1e-7, 1.0),
    "adamw": (1e-7, 1.0),
    "rmsprop": (1e-7, 1.0),
    "adagrad": (1e-6, 10.0),
    "adadelta": (1e-3, 100.0),
    "lion": (1e-8, 0.1),
    "muon": (1e-6, 10.0),
    "muon_adamw": (1e-7, 1.0),
    "lr_free": (1e-3, 100.0),
    "unknown": (1e-7, 10.0),
}

_ADAPTIVE = frozenset({"adam", "adamw", "rmsprop", "adagrad", "adadelta", "lion", "muon", "muon_adamw"})

# class-name (lower case, without underscores) -> family
_CLASS_NAMES = {
    "adam": "adam",
    "nadam": "adam",
    "radam": "adam",
    "adamax": "adam",
    "sparseadam": "adam",
    "adamw": "adamw",
    "adamwschedulefree": "adamw",
    "radamschedulefree": "adamw",
    "schedulefreeadamw": "adamw",
    "sgdschedulefree": "lr_free",
    "rmsprop": "rmsprop",
    "adagrad": "adagrad",
    "adadelta": "adadelta",
    "lion": "lion",
    "muon": "muon",  # torch.optim.Muon, keras.optimizers.Muon (see _muon_family), Keller Jordan's classes
    "muonwithauxadam": "muon",
    "singledevicemuon": "muon",
    "singledevicemuonwithauxadam": "muon",
    "prodigy": "lr_free",
    "dadaptadam": "lr_free",
    "dadaptsgd": "lr_free",
    "dadaptadagrad": "lr_free",
    "dadaptlion": "lr_free",
    "dadaptadan": "lr_free",
    "sgd": "sgd",
    "momentum": "sgd_momentum",
    # optax factory names (``optax.nadamw``, ``optax.noisy_sgd``, ...) not covered above
    "nadamw": "adamw",
    "adamaxw": "adamw",
    "amsgrad": "adam",
    "adabelief": "adam",
    "yogi": "adam",
    "noisysgd": "sgd",
}


# the same update in another storage or kernel: bitsandbytes' ``PagedAdamW8bit``, ``Lion8bit``,
# torchao's ``AdamW4bit``/``AdamWFp8``, apex's and DeepSpeed's ``FusedAdam``, ``DeepSpeedCPUAdam``,
# timm's ``AdamWLegacy``: the class name without these is the optimizer's
_PREFIXES = ("deepspeedcpu", "deepspeed", "paged", "fused")
_SUFFIXES = ("8bit", "32bit", "4bit", "fp8", "legacy")


def _class_family(name: str) -> str:
    """The family of a class name (lower case, no underscores), its storage and kernel words aside.

    Example:
        >>> [_class_family(n) for n in ("pagedadamw8bit", "lion8bit", "fusedadam", "deepspeedcpuadam")]
        ['adamw', 'lion', 'adam', 'adam']
    """
    if name in _CLASS_NAMES:
        return _CLASS_NAMES[name]
    for prefix in _PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            name = name[len(prefix):]
            break
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return _CLASS_NAMES.get(name, "unknown")


def _momentum_of(optimizer: Any) -> float:
    groups = getattr(optimizer, "param_groups", None)  # torch
    if groups:
        group = groups[0]
        if "momentum" not in group and isinstance(group.get("betas"), (tuple, list)) and group["betas"]:
            return float(group["betas"][0] or 0.0)  # bitsandbytes' SGD8bit keeps its momentum as betas[0]
        return float(group.get("momentum", 0.0) or 0.0)
    momentum = getattr(optimizer, "momentum", 0.0)  # keras
    try:
        return float(momentum)
    except (TypeError, ValueError):  # a keras Variable or tensor
        try:
            return float(momentum.numpy())
        except Exception:  # noqa: BLE001 - unknown object: assume no momentum
            return 0.0


def _muon_family(optimizer: Any, keywords: dict[str, Any] | None = None) -> str:
    """``"muon_adamw"`` for a Muon whose update is scaled to AdamW's RMS, else ``"muon"``: torch's
    ``adjust_lr_fn="match_rms_adamw"``, Keras' ``rms_rate`` (0.2 by default; ``None`` turns it off),
    optax's ``consistent_rms`` (off by default)."""
    if keywords is not None:  # an optax factory
        return "muon_adamw" if keywords.get("consistent_rms") is not None else "muon"
    groups = getattr(optimizer, "param_groups", None)
    if groups:
        matched = any(isinstance(g, dict) and g.get("adjust_lr_fn") == "match_rms_adamw" for g in groups)
        return "muon_adamw" if matched else "muon"
    return "muon_adamw" if getattr(optimizer, "rms_rate", None) is not None else "muon"


def _factory_family(factory: Any) -> str:
    """The family of an optimizer factory function (optax style), by its name and bound momentum."""
    keywords: dict[str, Any] = {}
    while isinstance(factory, functools.partial):
        keywords = {**factory.keywords, **keywords}
        factory = factory.func
    name = getattr(factory, "__name__", "")
    family = _CLASS_NAMES.get(name.lower().replace("_", ""), "unknown")
    momentum = keywords.get("momentum")
    if family == "sgd" and isinstance(momentum, (int, float)) and not isinstance(momentum, bool) and momentum > 0:
        family = "sgd_momentum"
    if family == "muon":
        family = _muon_family(factory, keywords)
    return family


def optimizer_family(optimizer: Any) -> str:
    """The family of an optimizer, for defaults and scaling rules.

    Args:
        optimizer: a family name from :data:`FAMILIES`, a class name (``"AdamW"``), an optimizer
            object from any framework (recognised by its class name; SGD by its momentum), or an
            optimizer factory function such as ``optax.adam`` (recognised by its ``__name__``; a
            ``functools.partial`` by the function it wraps and a bound ``momentum`` keyword).

    Returns:
        One of :data:`FAMILIES`; ``"unknown"`` for an optimizer it does not recognise.

    Example:
        >>> optimizer_family("AdamW"), optimizer_family("sgd_momentum")
        ('adamw', 'sgd_momentum')
        >>> def sgd(learning_rate, momentum=None): ...   # the shape of optax.sgd
        >>> optimizer_family(sgd), optimizer_family(functools.partial(sgd, momentum=0.9))
        ('sgd', 'sgd_momentum')
        >>> class Muon:  # the shape of torch.optim.Muon
        ...     def __init__(self, adjust_lr_fn=None): self.param_groups = [{"adjust_lr_fn": adjust_lr_fn}]
        >>> optimizer_family(Muon()), optimizer_family(Muon("match_rms_adamw"))
        ('muon', 'muon_adamw')
    """
    if isinstance(optimizer, str):
        key = optimizer.strip().lower()
        if key in FAMILIES:
            return key
        return _class_family(key.replace("_", "").replace("-", ""))
    if optimizer is None:
        raise ValueError("optimizer must be an optimizer object or a family name, got None")
    if isinstance(optimizer, (types.FunctionType, functools.partial)):
        return _factory_family(optimizer)
    # torch's ZeroRedundancyOptimizer and similar wrappers expose the inner optimizer
    inner = getattr(optimizer, "optim", None)
    if inner is not None and hasattr(inner, "param_groups"):
        optimizer = inner
    parts = getattr(optimizer, "optimizers", None)  # lrkit.torch.combine(muon, adamw): the first one's
    if isinstance(parts, (list, tuple)) and parts and all(hasattr(p, "param_groups") for p in parts):
        return optimizer_family(parts[0])
    name = type(optimizer).__name__.lower().replace("_", "")
    family = _class_family(name)
    if family == "sgd" and _momentum_of(optimizer) > 0:
        family = "sgd_momentum"
    if family == "muon":
        family = _muon_family(optimizer)
    return family


def lr_ignored(optimizer: Any) -> str | None:
    """Why an optimizer object ignores the LR in its param groups, ``None`` when it uses it.

    Hugging Face's (and fairseq's) ``Adafactor(relative_step=True)`` computes its own step size
    from the step count (:math:`\\min(10^{-2}, 1/\\sqrt{t})`, times the parameters' RMS with
    ``scale_parameter``) and never reads ``param_group["lr"]``: an LR set by a finder, a schedule
    or a guard would change nothing.

    Example:
        >>> class Adafactor:  # the shape of transformers.optimization.Adafactor
        ...     param_groups = [{"lr": None, "relative_step": True}]
        >>> lr_ignored(Adafactor()).split(":")[0]
        'Adafactor(relative_step=True) computes its own step size from the step count'
        >>> lr_ignored("AdamW") is None
        True
    """
    parts = getattr(optimizer, "optimizers", None)  # lrkit.torch.combine(...): any of its optimizers
    if isinstance(parts, (list, tuple)) and parts and all(hasattr(p, "param_groups") for p in parts):
        return next((why for why in map(lr_ignored, parts) if why is not None), None)
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, (list, tuple)):
        return None
    if any(isinstance(g, dict) and g.get("relative_step") for g in groups):
        name = type(optimizer).__name__
        return (f"{name}(relative_step=True) computes its own step size from the step count: it ignores the "
                f"LR of its param groups, so no LR set from outside would change anything. Build it with an "
                f"LR instead, e.g. {name}(params, lr=1e-3, relative_step=False, scale_parameter=False, "
                f"warmup_init=False)")
    return None


def _family(family_or_optimizer: Any) -> str:
    return optimizer_family(family_or_optimizer)


def default_lr(family_or_optimizer: Any) -> float:
    """The rule-of-thumb learning rate of an optimizer family (see the module table for sources).

    Example:
        >>> default_lr("sgd"), default_lr("adadelta")
        (0.01, 1.0)
    """
    return _DEFAULT_LR[_family(family_or_optimizer)]


def lr_range(family_or_optimizer: Any) -> tuple[float, float]:
    """Default ``(start_lr, end_lr)`` of a range test for this optimizer family.

    The bounds are wide enough to contain the best learning rate of unscaled or ill-conditioned
    problems (several decades below the default) and to reach divergence above it.

    Example:
        >>> lr_range("adam")
        (1e-07, 1.0)
    """
    return _LR_RANGE[_family(family_or_optimizer)]


def scaling_rule(family_or_optimizer: Any) -> str:
    """``"linear"`` for SGD-like, ``"sqrt"`` for adaptive, ``"none"`` for learning-rate-free optimizers.

    Unknown optimizers get the more conservative square-root rule.
    """
    family = _family(family_or_optimizer)
    if family in ("sgd", "sgd_momentum"):
        return "linear"
    if family == "lr_free":
        return "none"
    return "sqrt"


def _check_batch(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def scale_lr(
    lr: float,
    from_batch_size: int,
    to_batch_size: int,
    rule: str = "auto",
    family: Any = None,
) -> float:
    """Rescale a learning rate found at one batch size for training at another.

    .. math::

        \\eta_1 = \\eta_0 \\, (B_1 / B_0)^{p},\\qquad p = 1 \\text{ (linear)},\\ 
        p = 1/2 \\text{ (sqrt)},\\ p = 0 \\text{ (none)}

    Args:
        lr: the learning rate :math:`\\eta_0` at batch size :math:`B_0`; finite and > 0.
        from_batch_size: :math:`B_0`, an integer >= 1.
        to_batch_size: :math:`B_1`, an integer >= 1.
        rule: ``"linear"``, ``"sqrt"``, ``"none"`` or ``"auto"`` (pick by ``family``, see
            :func:`scaling_rule`).
        family: the optimizer (family name or object); used when ``rule="auto"``.

    Returns:
        The rescaled learning rate :math:`\\eta_1`.

    Example:
        >>> scale_lr(0.01, 32, 128, rule="sqrt")
        0.02
    """
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    b0 = _check_batch("from_batch_size", from_batch_size)
    b1 = _check_batch("to_batch_size", to_batch_size)
    if rule == "auto":
        rule = scaling_rule(family if family is not None else "unknown")
    if rule == "linear":
        power = 1.0
    elif rule == "sqrt":
        power = 0.5
    elif rule == "none":
        power = 0.0
    else:
        raise ValueError(f"rule must be one of 'linear', 'sqrt', 'none', 'auto', got {rule!r}")
    return float(lr * (b1 / b0) ** power)


def warmup_steps_for(
    from_batch_size: int,
    to_batch_size: int,
    *,
    steps_per_epoch: int,
    warmup_epochs: float = 5.0,
    min_ratio: float = 2.0,
) -> int:
    """Warmup the linear scaling rule needs when the batch grows (Goyal et al. 2017).

    Goyal et al. ramp the LR linearly from :math:`\\eta_0` to :math:`k\\eta_0` over the first
    5 epochs when the batch grows by :math:`k`. Below ``min_ratio`` (a batch less than twice as
    large) no warmup is needed; shrinking the batch never needs one.

    Args:
        from_batch_size: the batch size the LR was tuned at.
        to_batch_size: the batch size of the real run.
        steps_per_epoch: optimizer steps per epoch at ``to_batch_size``; an integer >= 1.
        warmup_epochs: epochs of warmup, >= 0 (5 in the paper).
        min_ratio: the growth factor from which warmup is recommended, >= 1.

    Returns:
        The number of warmup steps (0 if none is needed).

    Example:
        >>> warmup_steps_for(256, 8192, steps_per_epoch=156)
        780
        >>> warmup_steps_for(256, 256, steps_per_epoch=156)
        0
    """
    b0 = _check_batch("from_batch_size", from_batch_size)
    b1 = _check_batch("to_batch_size", to_batch_size)
    spe = _check_batch("steps_per_epoch", steps_per_epoch)
    if not (math.isfinite(warmup_epochs) and warmup_epochs >= 0):
        raise ValueError(f"warmup_epochs must be a finite number >= 0, got {warmup_epochs!r}")
    if not (math.isfinite(min_ratio) and min_ratio >= 1):
        raise ValueError(f"min_ratio must be a finite number >= 1, got {min_ratio!r}")
    if b1 / b0 < min_ratio:
        return 0
    return int(math.ceil(warmup_epochs * spe))
