"""``lrkit find``: run the LR range test on the built-in digits example or on your own model.

TARGET is ``path/to/file.py:function`` or ``package.module:function``. The function is called with
no arguments (after seeding ``torch``, ``numpy`` and ``random`` with ``--seed``) and returns a dict
describing the task. Its ``"framework"`` key says which finder runs (``"torch"`` when absent):

* ``"torch"`` -- ``model`` (a ``torch.nn.Module``), ``optimizer`` (a ``torch.optim.Optimizer``, or
  a list of them with ``step_fn``), ``loss_fn`` (``loss_fn(output, target)``, or ``None`` for
  models whose output has a ``.loss``), ``train_loader`` (an iterable of batches) -- required;
  ``val_loader``, ``step_fn``, ``batch_size``, ``accumulation_steps``, ``grad_clip_norm``, ``amp``
  -- optional (see :func:`lrkit.find_lr`).
* ``"keras"`` -- ``model`` (a compiled Keras 3 model) -- required; ``x``, ``y``, ``dataset``,
  ``batch_size``, ``val_data`` -- optional (see :func:`lrkit.keras.find_lr`).
* ``"optax"`` (or ``"jax"``) -- ``loss_fn`` (``loss_fn(params, batch) -> loss``), ``params``,
  ``optimizer`` (an optax factory such as ``optax.adam``), ``batches`` -- required;
  ``val_batches``, ``has_aux``, ``model_state``, ``batch_size``, ``family`` -- optional (see
  :func:`lrkit.jax.find_lr`).

Example ``my_task.py``::

    def task():
        model = Net()
        return {"model": model, "optimizer": torch.optim.AdamW(model.parameters(), lr=1e-3),
                "loss_fn": torch.nn.CrossEntropyLoss(), "train_loader": loader}

and ``lrkit find my_task.py:task --json``. ``--json`` prints one JSON object with the keys
``suggestion``, ``method``, ``band``, ``rules``, ``lrs``, ``losses``, ``smoothed_losses``,
``stopped_early``, ``num_iter``, ``num_points``, ``batch_size``, ``details``, ``target`` and, when
asked for, ``plot`` and ``report`` (the paths written).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import random
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from lrkit.cli import app
from lrkit.cli._errors import CLIError, UserCodeError, check_output

REQUIRED_KEYS = ("model", "optimizer", "loss_fn", "train_loader")
OPTIONAL_KEYS = ("val_loader", "step_fn", "batch_size", "accumulation_steps", "grad_clip_norm", "amp")
#: framework -> (required keys, optional keys) of the task dict
TASK_KEYS = {
    "torch": (REQUIRED_KEYS, OPTIONAL_KEYS),
    "keras": (("model",), ("x", "y", "dataset", "batch_size", "val_data")),
    "optax": (("loss_fn", "params", "optimizer", "batches"), ("val_batches", "has_aux", "model_state", "batch_size", "family")),
}
_ALIASES = {"jax": "optax", "pytorch": "torch"}

_HELP = """Run an LR range test and suggest a learning rate.

Without TARGET, runs the built-in example (an MLP on scikit-learn's digits). TARGET is
'path/to/file.py:function' or 'package.module:function': a function called with no arguments
that returns a dict. Its key "framework" says which finder runs: "torch" (the default) needs
model, optimizer, loss_fn, train_loader (optional: val_loader, step_fn, batch_size,
accumulation_steps, grad_clip_norm, amp); "keras" needs model, a compiled Keras 3 model (optional:
x, y, dataset, batch_size, val_data); "optax" (or "jax") needs loss_fn(params, batch), params,
optimizer (an optax factory such as optax.adam), batches (optional: val_batches, has_aux, model_state,
batch_size, family). The model, optimizer and RNG states are left exactly as they were.
"""


def _load_module(module_part: str) -> Any:
    looks_like_file = module_part.endswith(".py") or "/" in module_part or "\\" in module_part
    if looks_like_file:
        path = Path(module_part)
        if not path.is_file():
            raise CLIError(f"target file not found: {module_part}")
        path = path.resolve()
        spec = importlib.util.spec_from_file_location(f"_lrkit_target_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise CLIError(f"cannot import {module_part}: not a Python source file")
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.parent))  # let the file import its neighbours
        try:
            spec.loader.exec_module(module)
        except SyntaxError as exc:
            raise CLIError(f"target file {module_part} has a syntax error at line {exc.lineno}: {exc.msg}") from None
        except Exception as exc:
            _raise_for_import(module_part, exc)
        finally:
            sys.path.remove(str(path.parent))
        return module
    try:
        return importlib.import_module(module_part)
    except ModuleNotFoundError as exc:
        if exc.name and (module_part == exc.name or module_part.startswith(exc.name + ".")):
            raise CLIError(
                f"cannot import module {module_part!r} (no module named {exc.name!r}); "
                "for a file, pass path/to/file.py:function"
            ) from None
        _raise_for_import(module_part, exc)
    except SyntaxError as exc:
        raise CLIError(f"target module {module_part} has a syntax error in {exc.filename} at line "
                       f"{exc.lineno}: {exc.msg}") from None
    except Exception as exc:
        _raise_for_import(module_part, exc)


def _raise_for_import(module_part: str, exc: Exception):
    """An error while importing the user's target: a missing package in one line, else theirs."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        from lrkit.cli._errors import _EXTRAS

        top = exc.name.split(".")[0]
        hint = f" (pip install 'lrkit[{_EXTRAS[top]}]')" if top in _EXTRAS else ""
        raise CLIError(f"importing {module_part} failed: it imports {exc.name!r}, which is not installed{hint}") \
            from None
    raise UserCodeError(f"importing {module_part} raised an exception in your code", exc) from None


def resolve_target(spec: str) -> Any:
    """Import TARGET's module and return its function (``CLIError`` for a bad TARGET)."""
    if ":" not in spec:
        raise CLIError(f"TARGET must be 'path/to/file.py:function' or 'package.module:function', got {spec!r}")
    module_part, func_name = spec.rsplit(":", 1)
    if not module_part or not func_name.isidentifier():
        raise CLIError(f"TARGET must be 'path/to/file.py:function' or 'package.module:function', got {spec!r}")
    module = _load_module(module_part)
    func = getattr(module, func_name, None)
    if func is None:
        funcs = sorted(n for n, v in vars(module).items()
                       if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__)
        listed = ", ".join(funcs[:12]) + (", ..." if len(funcs) > 12 else "")
        raise CLIError(f"{module_part} has no function {func_name!r}; functions defined there: {listed or 'none'}")
    if not callable(func):
        raise CLIError(f"{module_part}:{func_name} is a {type(func).__name__}, not a function")
    return func


def load_target(spec: str, *, seed: int | None = None) -> dict[str, Any]:
    """Import and call TARGET (after seeding the RNGs with ``seed``); check the dict it returns."""
    func = resolve_target(spec)
    _check_no_required_arguments(spec, func)
    if seed is not None:
        _seed_everything(seed)
    try:
        out = func()
    except CLIError:
        raise
    except Exception as exc:
        raise UserCodeError(f"calling {spec}() raised an exception in your code", exc) from None
    if not isinstance(out, dict):
        raise CLIError(
            f"{spec} must return a dict with the keys {', '.join(REQUIRED_KEYS)}, got {type(out).__name__}"
        )
    out = dict(out)
    framework = out.pop("framework", "torch")
    framework = _ALIASES.get(framework, framework) if isinstance(framework, str) else framework
    if framework not in TASK_KEYS:
        raise CLIError(f"{spec} returned framework={framework!r}; lrkit find runs 'torch' (the default), 'keras' "
                       f"or 'optax' (also 'jax')")
    required, optional = TASK_KEYS[framework]
    missing = [k for k in required if k not in out]
    if missing:
        raise CLIError(f"{spec} returned a dict without the key(s) {', '.join(missing)}; required for "
                       f"framework={framework!r}: {', '.join(required)}")
    unknown = sorted(set(out) - set(required) - set(optional))
    if unknown:
        raise CLIError(
            f"{spec} returned unknown key(s) {', '.join(map(str, unknown))}; allowed for framework={framework!r}: "
            f"{', '.join(required + optional)}"
        )
    out["framework"] = framework
    return out


def _run_finder(spec: dict[str, Any], common: dict[str, Any]) -> Any:
    """The framework's finder on the task dict (``common``: the options every finder takes)."""
    framework = spec.get("framework", "torch")
    task = {k: v for k, v in spec.items() if k != "framework"}
    if framework == "keras":
        from lrkit.integrations.keras.trainer import find_lr_keras

        model = task.pop("model")
        return find_lr_keras(model, task.pop("x", None), task.pop("y", None), **task, **common)
    if framework == "optax":
        from lrkit.integrations.jax.trainer import find_lr_optax

        return find_lr_optax(task.pop("loss_fn"), task.pop("params"), task.pop("optimizer"), task.pop("batches"),
                             **task, **common)
    from lrkit.integrations.torch.trainer import find_lr

    return find_lr(
        task["model"], task["optimizer"], task["loss_fn"], task["train_loader"],
        val_loader=task.get("val_loader"), step_fn=task.get("step_fn"),
        batch_size=task.get("batch_size"), accumulation_steps=task.get("accumulation_steps", 1),
        grad_clip_norm=task.get("grad_clip_norm"), amp=task.get("amp", False), **common)


@contextlib.contextmanager
def _their_errors(what: str):
    """Errors of lrkit's checks stay one line; anything else was raised by the user's code."""
    try:
        yield
    except (CLIError, ValueError, ModuleNotFoundError):
        raise
    except Exception as exc:
        raise UserCodeError(what, exc) from None


def _check_no_required_arguments(spec: str, func: Any) -> None:
    """TARGET is called with no arguments: refuse one that needs some, naming them."""
    import inspect

    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable without a signature: just call it
        return
    required = [p.name for p in params if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if required:
        raise CLIError(f"{spec} needs the argument(s) {', '.join(required)}, but TARGET is called with none; "
                       f"give them defaults or wrap it: def task(): return {getattr(func, '__name__', 'f')}(...)")


def _seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:  # a Keras or optax task without torch installed
        return
    torch.manual_seed(seed)


@app.command("find", help=_HELP)
def find_command(
    target: Annotated[Optional[str], typer.Argument(help="path/to/file.py:function or package.module:function (default: built-in digits example)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object (suggestion, lrs, losses, method, rules, band, ...) on stdout.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Save the loss-vs-LR plot to this PNG file.")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write a self-contained HTML report (report.html, finder.png) into this directory.")] = None,
    num_iter: Annotated[Optional[int], typer.Option("--num-iter", help="Steps of the range test (default 100, or planned from --train-steps).")] = None,
    start_lr: Annotated[Optional[float], typer.Option("--start-lr", help="First LR (default: from the optimizer family).")] = None,
    end_lr: Annotated[Optional[float], typer.Option("--end-lr", help="Last LR (default: from the optimizer family).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for torch/numpy/random before building the target, and for the suggestion.")] = 0,
    mode: Annotated[str, typer.Option("--mode", help="LR ramp: exp or linear.")] = "exp",
    verify_steps: Annotated[Optional[int], typer.Option("--verify-steps", help="Steps per candidate verification run (0: judge the curve only).")] = None,
    target_batch_size: Annotated[Optional[int], typer.Option("--target-batch-size", help="Batch size of the real run, if it differs: the suggestion is rescaled (linear rule for SGD, square root for adaptive optimizers).")] = None,
    train_steps: Annotated[Optional[int], typer.Option("--train-steps", help="Length of the real run in optimizer steps: the finder then costs at most 30% of it.")] = None,
    many_epochs: Annotated[bool, typer.Option("--many-epochs/--no-many-epochs", help="Divide the answer for a run of many passes over a training set the model can fit (lrkit.finder.regime); --no-many-epochs for a run that early stopping ends at its best validation loss.")] = True,
) -> None:
    if num_iter is not None and num_iter < 2:
        raise CLIError(f"--num-iter must be >= 2, got {num_iter}")
    if verify_steps is not None and verify_steps < 0:
        raise CLIError(f"--verify-steps must be >= 0, got {verify_steps}")
    if train_steps is not None and train_steps < 1:
        raise CLIError(f"--train-steps must be >= 1 (the length of the real run), got {train_steps}")
    from lrkit.finder.range_test import plan_budget

    num_iter, planned_verify = plan_budget(num_iter=num_iter, verify=verify_steps != 0, verify_steps=verify_steps,
                                           train_steps=train_steps)
    check_output("--plot", plot, directory=False)
    check_output("--report", report, directory=True)
    if target_batch_size is not None and target_batch_size < 1:
        raise CLIError(f"--target-batch-size must be >= 1, got {target_batch_size}")
    if mode not in ("exp", "linear"):
        raise CLIError(f"--mode must be 'exp' or 'linear', got {mode!r}")
    if start_lr is not None and end_lr is not None:
        from lrkit.finder.range_test import lr_ramp

        lr_ramp(start_lr, end_lr, num_iter, mode)  # bad bounds fail here, before anything is built
    if target is None:
        from lrkit.examples.digits import digits_task

        _seed_everything(seed)
        spec = digits_task(seed=seed).as_target()
        target_name = "lrkit.examples.digits (built-in)"
    else:
        spec = load_target(target, seed=seed)
        target_name = target
    from lrkit.integrations._progress import progress_bar

    show_bar = not json_out or sys.stderr.isatty()
    with progress_bar(num_iter, enabled=show_bar) as callback, _their_errors("the range test failed in your model, loss or data"):
        result = _run_finder(spec, dict(
            start_lr=start_lr, end_lr=end_lr, num_iter=num_iter, mode=mode,
            progress=callback if callback is not None else False,
            verify=planned_verify > 0, verify_steps=planned_verify or None, seed=seed,
            target_batch_size=target_batch_size, train_steps=train_steps, many_epochs=many_epochs,
        ))
    written: dict[str, str] = {}
    if plot is not None:
        import matplotlib.figure

        from lrkit.report.finder_plot import figure_png

        fig = matplotlib.figure.Figure(figsize=(8, 4.5))
        result.plot(fig.add_subplot(1, 1, 1))
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot.write_bytes(figure_png(fig))
        written["plot"] = str(plot)
    if report is not None:
        from lrkit.report.html import write_finder_report

        framework = spec.get("framework", "torch") if target is not None else "torch"
        written["report"] = str(write_finder_report(result, report, title=f"lrkit find: {target_name}",
                                                    framework=framework, seed=seed))
    if json_out:
        payload = result.to_dict()
        payload["target"] = target_name
        payload.update(written)
        typer.echo(json.dumps(payload, allow_nan=False))
    else:
        typer.echo(f"target: {target_name}")
        typer.echo(result.summary())
        for key, path in written.items():
            typer.echo(f"{key}: {path}")
