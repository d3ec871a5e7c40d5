"""Pytree paths as names ("h_0/attn/q_proj/kernel"): what rules, adapters and checks match on."""
from __future__ import annotations

import jax


def path_keys(path) -> tuple[str, ...]:
    """("h_0", "attn", "q_proj", "kernel") for a jax key path."""
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def path_name(path) -> str:
    return "/".join(path_keys(path))


def named_leaves(tree, is_leaf=None) -> dict:
    """{"h_0/attn/q_proj/kernel": leaf} for every leaf, in tree order."""
    return {path_name(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_leaf)}


def set_path(tree: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def get_path(tree, path: tuple):
    for key in path:
        tree = tree[key]
    return tree
