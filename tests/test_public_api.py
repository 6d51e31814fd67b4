"""The public surface: what ``redisaq_core`` exports, documented, and nothing else by accident."""

from __future__ import annotations

import inspect
import warnings

import pytest

import redisaq_core


def test_all_is_sorted_and_every_name_exists() -> None:
    names = redisaq_core.__all__
    assert names == sorted(names), "keep __all__ sorted"
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(redisaq_core, name), name


def test_every_public_name_is_documented() -> None:
    for name in redisaq_core.__all__:
        value = getattr(redisaq_core, name)
        if name == "__version__":
            assert isinstance(value, str) and value
            continue
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue  # a type alias (Callback, BatchCallback)
        assert inspect.getdoc(value), f"{name} has no docstring"
        if inspect.isclass(value):
            for attr, member in vars(value).items():
                if attr.startswith("_") or not callable(member):
                    continue
                assert inspect.getdoc(member), f"{name}.{attr} has no docstring"


def test_the_internal_assign_still_imports_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match="internal"):
        assign = redisaq_core.assign
    assert callable(assign)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "assign" not in redisaq_core.__all__
    with pytest.raises(AttributeError):
        redisaq_core.no_such_name  # noqa: B018
