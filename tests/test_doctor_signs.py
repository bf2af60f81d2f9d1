"""The doctor's signs as parts: each sign's docstring example runs, the Doctor composes them in
one ranked list, and every sign's state survives ``state_dict``/``load_state_dict``."""
import doctest
import importlib
import json
import pkgutil

import numpy as np
import pytest

import lrkit.doctor.signs as signs_pkg
from lrkit.doctor import Doctor
from lrkit.doctor.signs import Sign

SIGN_MODULES = [importlib.import_module(f"lrkit.doctor.signs.{m.name}") for m in pkgutil.iter_modules(signs_pkg.__path__)]


@pytest.mark.parametrize("module", SIGN_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_sign_docstring_examples_run(module):
    failures, _ = doctest.testmod(module)
    assert failures == 0


def test_the_doctor_lists_every_sign_once_with_disjoint_state_keys():
    doc = Doctor(window=10)
    signs = list(doc.signs.values())
    assert all(isinstance(s, Sign) for s in signs)
    assert len({s.name for s in signs}) == len(signs)
    keys = [set(s.state_dict()) for s in signs]
    assert all(not (a & b) for i, a in enumerate(keys) for b in keys[i + 1:])
    assert not set().union(*keys) & set(doc._track.state_dict())
