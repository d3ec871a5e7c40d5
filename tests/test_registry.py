"""The component registry: unknown names list what exists; re-registration needs replace=True."""
import pytest

from neojax import registry


def test_unknown_names_list_the_registered_ones():
    import neojax.model  # noqa: F401
    with pytest.raises(KeyError, match=r"unknown attention 'flash'.*'global'.*'local'"):
        registry.get("attention", "flash")
    with pytest.raises(KeyError, match="no components of kind 'nope'"):
        registry.get("nope", "x")


def test_a_name_is_taken_once_unless_replaced():
    first, second = object(), object()
    with registry.scoped("demo", "a", first):
        registry.register("demo", "a")(first)  # the same object again (a re-import) is fine
        with pytest.raises(ValueError, match="already registered.*replace=True"):
            registry.register("demo", "a")(second)
        registry.register("demo", "a", replace=True)(second)
        assert registry.get("demo", "a") is second
    assert "demo" not in registry.kinds()


def test_scoped_restores_what_was_there():
    import neojax.model  # noqa: F401
    local = registry.get("attention", "local")
    with registry.scoped("attention", "local", "stand-in"):
        assert registry.get("attention", "local") == "stand-in"
    assert registry.get("attention", "local") is local
