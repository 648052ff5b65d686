"""Loaded by pytest before any test folder (tests/, research/tests/): a run in an environment where chaiderm
is not installed stops with one line that says what to install, instead of an import error per test module."""

from __future__ import annotations

import pytest

try:
    import numpy  # noqa: F401
    import torch  # noqa: F401

    import chaiderm  # noqa: F401
except ModuleNotFoundError as e:  # pytest run before the project was installed
    raise pytest.UsageError(
        f"{e.name} is not installed: install chaiderm with its test extras first, pip install -e '.[test]'"
    ) from None
