"""Channel atoms, their union-find and the per-tensor label arrays that the op rules propagate.

Every dim of a recorded tensor carries either ``None`` (nothing prunable flows through it), ``ANY`` (the
values are uniform along it, e.g. ``torch.zeros``: it couples with anything) or a 1-D ``int64`` array of
*atom ids*, one per position. Entries ``-1`` (unlabelled data) and ``-2`` (uniform) may appear inside
an array, e.g. after concatenating a labelled tensor with an input.
"""
from __future__ import annotations

import numpy as np

ANY = "any"
NONE_ID = -1
ANY_ID = -2


def as_array(lab, n: int) -> np.ndarray:
    """The label of one dim as an array of length ``n`` (None -> -1, ANY -> -2)."""
    if lab is None:
        return np.full(n, NONE_ID, dtype=np.int64)
    if isinstance(lab, str):
        return np.full(n, ANY_ID, dtype=np.int64)
    return lab


def is_labelled(lab) -> bool:
    return lab is not None and not isinstance(lab, str)


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of ``n`` atoms joined by edges ``a[i] -- b[i]``: the smallest atom id of each
    atom's component (vectorised hooking + pointer jumping, no Python loop over edges)."""
    parent = np.arange(n, dtype=np.int64)
    if len(a) == 0:
        return parent
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    while True:
        ra, rb = parent[a], parent[b]
        diff = ra != rb
        if not diff.any():
            return parent
        lo = np.minimum(ra[diff], rb[diff])
        hi = np.maximum(ra[diff], rb[diff])
        np.minimum.at(parent, hi, lo)
        # pointer jumping on the atoms not yet pointing at a root only: that set shrinks with every step
        act = np.flatnonzero(parent[parent] != parent)
        while len(act):
            parent[act] = parent[parent[act]]
            act = act[parent[parent[act]] != parent[act]]
        a, b = a[diff], b[diff]
