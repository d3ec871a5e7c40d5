"""Pruning masks for the blocks' matmul kernels (attention q/k/v/out, MLP): magnitude pruning,
global or per layer, and 2:4 structured sparsity. Embeddings, LayerNorms and biases are kept.

    masks = magnitude_masks(params, 0.5)          # or scope="layer", or two_four_masks(params)
    pruned = apply_masks(params, masks)           # zeros where a mask is False
"""
from __future__ import annotations

import flax
import numpy as np


def prunable(path: tuple) -> bool:
    """A block's matmul kernel ([in, out])."""
    return path[-1] == "kernel" and path[0].startswith("h_")


def _kernels(params) -> dict:
    return {p: np.asarray(w) for p, w in flax.traverse_util.flatten_dict(params).items() if prunable(p)}


def _smallest(magnitudes: np.ndarray, count: int) -> np.ndarray:
    """A mask keeping all but exactly `count` smallest entries (ties broken by position)."""
    keep = np.ones(magnitudes.size, bool)
    keep[np.argsort(magnitudes.ravel(), kind="stable")[:count]] = False
    return keep.reshape(magnitudes.shape)


def magnitude_masks(params, sparsity: float, scope: str = "global") -> dict:
    """{kernel path: keep mask} zeroing exactly round(sparsity x size) of the smallest |w|: over all
    prunable kernels together (global) or in each kernel (layer)."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity={sparsity}: must lie in [0, 1)")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope={scope!r}: choose 'global' or 'layer'")
    kernels = _kernels(params)
    if scope == "layer":
        return {p: _smallest(np.abs(w), round(sparsity * w.size)) for p, w in kernels.items()}
    flat = np.concatenate([np.abs(w).ravel() for w in kernels.values()])
    keep = _smallest(flat, round(sparsity * flat.size))
    out, start = {}, 0
    for p, w in kernels.items():
        out[p] = keep[start:start + w.size].reshape(w.shape)
        start += w.size
    return out


def two_four_masks(params) -> dict:
    """{kernel path: keep mask} keeping the 2 largest |w| of every 4 consecutive inputs of each
    output (the reduction dimension, as sparse tensor cores want it): exactly 50% sparse."""
    out = {}
    for p, w in _kernels(params).items():
        fan_in = w.shape[0]
        if fan_in % 4:
            raise ValueError(f"2:4 sparsity needs a multiple of 4 inputs; {'/'.join(p)} has {fan_in}")
        groups = np.abs(w).T.reshape(w.shape[1], fan_in // 4, 4)  # [out, groups, 4]
        order = np.argsort(groups, axis=-1, kind="stable")
        keep = np.ones_like(groups, bool)
        np.put_along_axis(keep, order[..., :2], False, axis=-1)
        out[p] = keep.reshape(w.shape[1], fan_in).T
    return out


def apply_masks(params, masks: dict):
    flat = flax.traverse_util.flatten_dict(params)
    return flax.traverse_util.unflatten_dict({p: np.where(masks[p], w, 0).astype(np.asarray(w).dtype)
                                              if p in masks else w for p, w in flat.items()})


def sparsity(params) -> float:
    """The share of exactly-zero weights among the prunable kernels."""
    kernels = _kernels(params)
    return sum(int((w == 0).sum()) for w in kernels.values()) / sum(w.size for w in kernels.values())


def is_two_four(params) -> bool:
    """Whether every prunable kernel has at most 2 non-zeros in each group of 4 inputs."""
    for w in _kernels(params).values():
        if w.shape[0] % 4 or ((w.T.reshape(w.shape[1], -1, 4) != 0).sum(-1) > 2).any():
            return False
    return True
