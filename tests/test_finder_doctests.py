"""Every docstring example of the finder, the torch adapter, the digits task and the report runs."""
from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "lrkit.finder.range_test",
    "lrkit.finder.result",
    "lrkit.collapse",
    "lrkit.report.finder_plot",
    "lrkit.report.html",
    "lrkit.report.sections",
    "lrkit.integrations._progress",
    "lrkit.integrations.torch.groups",
    "lrkit.integrations.torch.state",
    "lrkit.integrations.torch.trainer",
    "lrkit.examples.digits",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name.startswith(("lrkit.integrations", "lrkit.examples")):
        pytest.importorskip("torch")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0
