"""The component registry: unknown names list what exists; re-registration needs replace=True."""
import pytest

from neojax import registry


def test_unknown_names_list_the_registered_ones():
    import neojax.model  # noqa: F401
    with pytest.raises(KeyError, match=r"unknown attention 'flash'.*'global'.*'local'"):
        registry.get("attention", "flash")
    with pytest.raises(KeyError, match="no components of kind 'nope'"):
        registry.get("nope", "x")


def test_a_name_is_taken_once_unless_replaced(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "demo", {})
    first, second = object(), object()
    registry.register("demo", "a")(first)
    registry.register("demo", "a")(first)  # the same object again (a re-import) is fine
    with pytest.raises(ValueError, match="already registered.*replace=True"):
        registry.register("demo", "a")(second)
    registry.register("demo", "a", replace=True)(second)
    assert registry.get("demo", "a") is second
