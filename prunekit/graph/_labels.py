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
    """Connected components of ``n`` atoms joined by edges ``a[i] -- b[i]``: a root id per atom."""
    if len(a) == 0:
        return np.arange(n, dtype=np.int64)
    try:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components
    except ImportError:  # pragma: no cover - scipy is optional
        return _components_python(n, a, b)
    m = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, lab = connected_components(m, directed=False)
    return lab.astype(np.int64)


def _components_python(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in zip(a.tolist(), b.tolist()):
        rx, ry = find(x), find(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    return np.array([find(i) for i in range(n)], dtype=np.int64)
