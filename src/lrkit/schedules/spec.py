"""Parse a schedule spec such as ``warmup(schedule=cosine(base_lr=0.1, total_steps=900), warmup_steps=100)``.

The spec is a Python-like call of the constructors in :mod:`lrkit.schedules`, with the same
names and parameter names as the Python API. It is parsed with :mod:`ast` (``eval`` mode)
and only these nodes are accepted: calls of known constructors, keyword and positional
arguments, numbers, strings, ``True``/``False``/``None``, lists, tuples and a leading minus
sign. Nothing is ever evaluated as Python code.
"""
from __future__ import annotations

import ast
import inspect
from typing import Any, Callable

from lrkit.schedules.base import Schedule

__all__ = ["parse_spec", "from_dict", "constructors"]


def constructors() -> dict[str, Callable[..., Schedule]]:
    """The constructors a spec may call, by name."""
    from lrkit import schedules

    return {name: getattr(schedules, name) for name in schedules.SCHEDULE_CONSTRUCTORS}


#: deepest nesting of calls and lists a spec (or a ``to_dict()``) may have; real specs use 2-4
MAX_NESTING = 100


def _err(msg: str) -> ValueError:
    return ValueError(msg)


def _show(src: str, limit: int = 120) -> str:
    """``src`` quoted, shortened in the middle if long (error messages stay one readable line)."""
    if len(src) <= limit:
        return repr(src)
    half = limit // 2
    return repr(src[:half] + " ... " + src[-half:]) + f" ({len(src)} characters)"


def _nesting(src: str) -> int:
    """The deepest nesting of ``(``/``[`` outside string literals."""
    depth = deepest = 0
    quote = None
    for ch in src:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]":
            depth -= 1
    return deepest


def parse_spec(text: str) -> Schedule:
    """Build the :class:`Schedule` described by ``text``.

    Args:
        text: a constructor call, e.g. ``"cosine(base_lr=0.1, total_steps=1000)"``,
            ``"multistep(base_lr=0.1, milestones=[30, 80])"`` or
            ``"warmup(schedule=cosine(base_lr=0.1, total_steps=900), warmup_steps=100)"``.

    Returns:
        The schedule; ``parse_spec(s.to_spec()) == s`` for every schedule ``s``.

    Raises:
        ValueError: with a one-line message, for a syntax error, an unknown constructor (the
            message lists the known ones), an unknown parameter (it lists the accepted ones),
            an unsupported expression, or a value the constructor rejects.

    Example:
        >>> s = parse_spec("cosine(base_lr=0.1, total_steps=100)")
        >>> s(0), s.total_steps
        (0.1, 100)
    """
    if not isinstance(text, str):
        raise _err(f"spec must be a string such as 'cosine(base_lr=0.1, total_steps=100)', got {text!r}")
    src = text.strip()
    if not src:
        raise _err("empty schedule spec; write a call such as 'cosine(base_lr=0.1, total_steps=100)'")
    depth = _nesting(src)
    if depth > MAX_NESTING:
        raise _err(f"schedule spec {_show(src)} nests {depth} calls or lists inside one another; at most "
                   f"{MAX_NESTING} are accepted (compose fewer levels, e.g. one scale() with the product "
                   f"of the factors)")
    try:
        tree = ast.parse(src, mode="eval")
    except SyntaxError as exc:
        col = f" at column {exc.offset}" if exc.offset else ""
        raise _err(f"cannot parse schedule spec {_show(src)}{col}: {exc.msg}") from None
    value = _value(tree.body, constructors())
    if not isinstance(value, Schedule):
        raise _err(f"schedule spec must be a constructor call such as "
                   f"'cosine(base_lr=0.1, total_steps=100)', got {_show(src)}")
    return value


def _value(node: ast.AST, known: dict[str, Callable[..., Schedule]]) -> Any:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, (bool, int, float, str)) or node.value is None:
            return node.value
        raise _err(f"unsupported value {ast.unparse(node)!r} in schedule spec")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _value(node.operand, known)
        if isinstance(inner, bool) or not isinstance(inner, (int, float)):
            raise _err(f"a sign can only precede a number, got {ast.unparse(node)!r}")
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_value(e, known) for e in node.elts]
    if isinstance(node, ast.Call):
        return _call(node, known)
    raise _err(f"unsupported expression {ast.unparse(node)!r} in schedule spec; use numbers, "
               f"strings, lists and constructor calls")


def _call(node: ast.Call, known: dict[str, Callable[..., Schedule]]) -> Schedule:
    if not isinstance(node.func, ast.Name):
        raise _err(f"unsupported call {ast.unparse(node.func)!r}; known schedules: {', '.join(sorted(known))}")
    name = node.func.id
    if name not in known:
        raise _err(f"unknown schedule {name!r}; known schedules: {', '.join(sorted(known))}")
    fn = known[name]
    sig = inspect.signature(fn)
    accepted = list(sig.parameters)
    for a in node.args:
        if isinstance(a, ast.Starred):
            raise _err(f"'*' is not supported in schedule spec {ast.unparse(node)!r}")
    args = [_value(a, known) for a in node.args]
    kwargs: dict[str, Any] = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise _err(f"'**' is not supported in schedule spec {ast.unparse(node)!r}")
        if kw.arg not in sig.parameters:
            raise _err(f"{name}: unknown parameter {kw.arg!r}; accepted: {', '.join(accepted)}")
        if kw.arg in kwargs:
            raise _err(f"{name}: parameter {kw.arg!r} given twice")
        kwargs[kw.arg] = _value(kw.value, known)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise _err(f"{name}: {exc}; accepted parameters: {', '.join(accepted)}") from None
    return fn(*bound.args, **bound.kwargs)



def from_dict(d: dict) -> Schedule:
    """Rebuild a schedule from :meth:`Schedule.to_dict` output (e.g. after a JSON round trip).

    Args:
        d: ``{"name": <constructor>, "params": {...}}``; nested schedules (also inside lists,
            as in :func:`~lrkit.schedules.join`) are dicts of the same form.

    Returns:
        The schedule; ``from_dict(s.to_dict()) == s``.

    Raises:
        ValueError: an unknown constructor or parameter, or a value the constructor rejects.

    Example:
        >>> from lrkit.schedules import cosine, warmup
        >>> s = warmup(cosine(0.1, 900), 100)
        >>> from_dict(s.to_dict()) == s
        True
    """
    return _from_dict(d, constructors(), "schedule")


def _from_dict(d: Any, known: dict[str, Callable[..., Schedule]], where: str, depth: int = 1) -> Schedule:
    if depth > MAX_NESTING:
        raise _err(f"schedule dict nests more than {MAX_NESTING} schedules inside one another "
                   f"(at {where[:80]}...); compose fewer levels")
    if not isinstance(d, dict) or set(d) != {"name", "params"} or not isinstance(d["params"], dict):
        raise _err(f"{where} must be a dict {{'name': ..., 'params': {{...}}}} as made by "
                   f"Schedule.to_dict(), got {d!r}")
    name = d["name"]
    if name not in known:
        raise _err(f"unknown schedule {name!r}; known schedules: {', '.join(sorted(known))}")
    accepted = list(inspect.signature(known[name]).parameters)
    kwargs = {}
    for key, value in d["params"].items():
        if key not in accepted:
            raise _err(f"{name}: unknown parameter {key!r}; accepted: {', '.join(accepted)}")
        kwargs[key] = _from_value(value, known, f"{name}.{key}", depth)
    return known[name](**kwargs)


def _from_value(value: Any, known: dict[str, Callable[..., Schedule]], where: str, depth: int) -> Any:
    if isinstance(value, dict):
        return _from_dict(value, known, where, depth + 1)
    if isinstance(value, list):
        return [_from_value(x, known, f"{where}[{i}]", depth + 1) for i, x in enumerate(value)]
    return value
