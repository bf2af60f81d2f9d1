"""Several optimizers that make one update, as one ``torch.optim.Optimizer``.

Muon (``torch.optim.Muon``) orthogonalises the update of a 2-D weight matrix and refuses any other
parameter, so a model trained with it has a second optimizer for its biases, norms and embeddings
(torch's own docstring example: ``Muon`` for ``p.ndim == 2``, ``AdamW`` for the rest); the classic
``SparseAdam`` for an embedding plus ``Adam`` for the rest is the same shape. Everything that
expects *one* optimizer -- an LR scheduler, the Hugging Face ``Trainer(optimizers=...)``,
Lightning's automatic optimization, lrkit's finder, autopilot and guard -- can take them combined::

    muon = torch.optim.Muon([p for p in model.parameters() if p.ndim == 2], lr=0.02)
    adamw = torch.optim.AdamW([p for p in model.parameters() if p.ndim != 2], lr=3e-4)
    optimizer = lrkit.torch.combine(muon, adamw)      # then optimizer.step(), optimizer.zero_grad()

The combined optimizer holds no state of its own: its ``param_groups`` are the inner optimizers'
group dicts, in order (setting a group's LR sets it in the optimizer that owns it), its ``state``
reads and writes the inner optimizers' states, ``step()`` steps each in order (a closure is
evaluated once, first), and ``state_dict()`` is ``{"optimizers": [each one's state_dict()]}``.
lrkit reads the first group's LR above 0 as the run's LR and keeps every other group at its ratio
to it (:mod:`lrkit.integrations.torch.groups`), so the optimizer listed first -- Muon above -- is the
one whose LR the finder ramps, and its family (:func:`lrkit.scaling.optimizer_family`) the run's.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from typing import Any, Callable

import torch

__all__ = ["CombinedOptimizer", "combine"]


class _JointState(MutableMapping):
    """The inner optimizers' ``state`` dicts seen as one mapping from parameter to state."""

    def __init__(self, owner: "CombinedOptimizer") -> None:
        self._owner = owner

    def _holding(self, param: Any) -> dict | None:
        for opt in self._owner.optimizers:
            if param in opt.state:
                return opt.state
        return None

    def __getitem__(self, param: Any) -> Any:
        state = self._holding(param)
        if state is None:  # like torch's defaultdict: a parameter with no state yet gets an empty one
            state = self._owner._optimizer_of(param).state
        return state[param]

    def __setitem__(self, param: Any, value: Any) -> None:
        self._owner._optimizer_of(param).state[param] = value

    def __delitem__(self, param: Any) -> None:
        state = self._holding(param)
        if state is None:
            raise KeyError(param)
        del state[param]

    def __contains__(self, param: object) -> bool:
        return self._holding(param) is not None

    def __iter__(self) -> Iterator[Any]:
        for opt in self._owner.optimizers:
            yield from list(opt.state)

    def __len__(self) -> int:
        return sum(len(opt.state) for opt in self._owner.optimizers)


def _owners(optimizers: list[torch.optim.Optimizer]) -> dict[int, tuple[Any, int]]:
    """``id(param) -> (param, index of the optimizer that holds it)``; a clear error for a parameter
    that two of them hold."""
    owners: dict[int, tuple[Any, int]] = {}
    for i, opt in enumerate(optimizers):
        for group in opt.param_groups:
            for p in group["params"]:
                j = owners.setdefault(id(p), (p, i))[1]
                if j != i:
                    raise ValueError(f"optimizers {j} and {i} share a parameter (shape {tuple(p.shape)}): "
                                     "each parameter must belong to one optimizer")
    return owners


class CombinedOptimizer(torch.optim.Optimizer):
    """The optimizers of one update as one optimizer (module docstring); build it with :func:`combine`.

    Args:
        optimizers: ``torch.optim.Optimizer`` objects over disjoint parameters, at least one; a
            combined optimizer among them is unpacked.

    Example:
        >>> lin = torch.nn.Linear(3, 2)
        >>> opt = combine(torch.optim.SGD([lin.weight], lr=0.1), torch.optim.Adam([lin.bias], lr=0.01))
        >>> [g["lr"] for g in opt.param_groups]
        [0.1, 0.01]
        >>> opt.param_groups[1]["lr"] = 0.02; opt.optimizers[1].param_groups[0]["lr"]
        0.02
    """

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        flat: list[torch.optim.Optimizer] = []
        for i, opt in enumerate(optimizers):
            if isinstance(opt, CombinedOptimizer):
                flat.extend(opt.optimizers)
            elif isinstance(opt, torch.optim.Optimizer):
                flat.append(opt)
            else:
                raise TypeError(f"optimizers[{i}] must be a torch.optim.Optimizer, got {type(opt).__name__}")
        if not flat:
            raise ValueError("combine() needs at least one optimizer, got none")
        self.optimizers = flat
        self._owners = _owners(flat)
        # what torch.optim.Optimizer.__init__ sets up besides the groups and the state, which here
        # are the inner optimizers' (its __init__ would build groups of its own)
        self.defaults = dict(flat[0].defaults)
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()
        self._warned_capturable_if_run_uncaptured = True

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The inner optimizers' group dicts, in order (the same dict objects)."""
        return [group for opt in self.optimizers for group in opt.param_groups]

    @property
    def state(self) -> _JointState:  # type: ignore[override]
        """The inner optimizers' states, as one mapping from parameter to state."""
        return _JointState(self)

    def _optimizer_of(self, param: Any) -> torch.optim.Optimizer:
        """The inner optimizer that holds ``param`` (the map of :func:`_owners`, rebuilt when it does
        not know it: a group added to an inner optimizer since)."""
        entry = self._owners.get(id(param))
        if entry is None or entry[0] is not param:
            self._owners = _owners(self.optimizers)
            entry = self._owners.get(id(param))
        if entry is None or entry[0] is not param:
            raise KeyError("the parameter belongs to none of the combined optimizers")
        return self.optimizers[entry[1]]

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Evaluate ``closure`` once (if given, with gradients on), then step every optimizer in order."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """``{"optimizers": [each inner optimizer's state_dict()]}``."""
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Load what :meth:`state_dict` returned, each part into its optimizer."""
        parts = state_dict.get("optimizers") if isinstance(state_dict, dict) else None
        if not isinstance(parts, (list, tuple)) or len(parts) != len(self.optimizers):
            found = f"{len(parts)} parts" if isinstance(parts, (list, tuple)) else "no 'optimizers' list"
            raise ValueError(f"state_dict must be a CombinedOptimizer's, with {len(self.optimizers)} parts "
                             f"under 'optimizers' (one per optimizer); got {found}")
        for opt, part in zip(self.optimizers, parts):
            opt.load_state_dict(part)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise TypeError("add the group to one of the combined optimizers (CombinedOptimizer.optimizers[i]."
                        "add_param_group): which one should own it is not for the combination to guess")

    def __getstate__(self) -> dict[str, Any]:
        return {"optimizers": self.optimizers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(*state["optimizers"])

    def __repr__(self) -> str:
        inner = ", ".join(type(opt).__name__ for opt in self.optimizers)
        return f"CombinedOptimizer({inner})"


def combine(*optimizers: torch.optim.Optimizer) -> CombinedOptimizer:
    """The optimizers of one update (e.g. ``torch.optim.Muon`` for the weight matrices and ``AdamW``
    for the rest) as one ``torch.optim.Optimizer``; see :class:`CombinedOptimizer`.

    Example:
        >>> net = torch.nn.Linear(4, 2)
        >>> muon = torch.optim.Muon([net.weight], lr=0.02)
        >>> opt = combine(muon, torch.optim.AdamW([net.bias], lr=3e-4))
        >>> net(torch.ones(1, 4)).sum().backward(); opt.step(); opt.zero_grad()
        >>> len(opt.state), net.weight.grad is None
        (2, True)
    """
    return CombinedOptimizer(*optimizers)
