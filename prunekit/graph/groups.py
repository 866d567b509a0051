"""Turn a recording into channel groups and an exact cost model.

Union-find classes of atoms are *channels*; channels that share a parameter dim form one *group* (the
dims that shrink together). Each member (parameter or buffer FQN, dim) maps every position to a channel
of its group, or to -1 where the position cannot be removed.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from ._labels import components, is_labelled
from .trace import Recording, record


@dataclasses.dataclass
class Member:
    fqn: str  # parameter or buffer path
    dim: int
    size: int
    channel: np.ndarray  # [size] group channel of each position, -1 = kept always
    role: str  # "producer" (output channels of a layer), "consumer" (input channels) or "other"

    def positions(self, channels) -> np.ndarray:
        """Positions of this member that belong to the given group channels."""
        ch = np.asarray(channels if isinstance(channels, np.ndarray) else list(channels), dtype=np.int64)
        ch = ch[ch >= 0]
        if not len(ch):
            return np.zeros(0, np.int64)
        # a lookup table instead of np.isin (which sorts): its last slot stays False and serves channel -1
        sel = np.zeros(max(int(self.channel.max(initial=-1)), int(ch.max())) + 2, bool)
        sel[ch] = True
        return np.nonzero(sel[self.channel])[0]


@dataclasses.dataclass
class Group:
    id: int
    members: list
    width: int  # number of channels (a channel may span several positions of a member, e.g. a head)
    approximate: list  # reasons why removing channels changes outputs even when they are zero
    name: str = ""

    @property
    def producers(self):
        return [m for m in self.members if m.role == "producer"]


@dataclasses.dataclass
class NonPrunable:
    fqn: str
    dim: int
    size: int
    reason: str


class Graph:
    """Groups, non-prunable dims and an exact params/MACs cost model of one traced model."""

    def __init__(self, rec: Recording, output: Any):
        self.rec = rec
        self.output = output
        self.outputs_changed: list = []  # set by the validation forward when only some outputs are kept
        n = rec.n_atoms
        ea, eb = rec.edges()
        root = components(n, ea, eb) if n else np.zeros(0, np.int64)
        self.root = root
        dead_reason: dict[int, str] = {}
        dead = np.zeros(n, bool)
        if rec.dead:
            atoms = np.concatenate([a for a, _ in rec.dead])
            which = np.concatenate([np.full(len(a), i, np.int64) for i, (a, _) in enumerate(rec.dead)])
            roots, first = np.unique(root[atoms], return_index=True)
            dead[roots] = True
            reasons = [r for _, r in rec.dead]
            dead_reason = dict(zip(roots.tolist(), (reasons[i] for i in which[first].tolist())))
        used = np.zeros(n, bool)
        if rec.used:
            u = np.concatenate(rec.used)
            u = u[u >= 0]
            used[root[u]] = True
        producer = np.zeros(n, bool)
        consumer = np.zeros(n, bool)
        for atoms, rl in rec.roles:
            (producer if rl == "producer" else consumer)[atoms] = True
        live = used & ~dead  # indexed by root id
        # channels sharing a param dim belong to one group: union over roots, per param dim
        ga, gb, dims = [], [], []
        for fqn, d, start, size in rec.param_dims:
            r = root[start:start + size]
            lr = r[live[r]]  # repeated roots are harmless edges: no np.unique needed
            dims.append((fqn, d, start, size, r))
            if len(lr) > 1:
                ga.append(lr[:-1])
                gb.append(lr[1:])
        comp = components(n, np.concatenate(ga) if ga else np.zeros(0, np.int64),
                          np.concatenate(gb) if gb else np.zeros(0, np.int64)) if n else root
        gid_of_root = np.full(n, -1, np.int64)
        ch_of_root = np.full(n, -1, np.int64)
        groups: list[Group] = []
        comp_to_gid: dict[int, int] = {}
        self.nonprunable: list[NonPrunable] = []
        members_by_gid: dict[int, list] = {}
        for fqn, d, start, size, r in dims:
            lmask = live[r]
            if not lmask.any():
                if size > 1:
                    rs = r[dead[r]]
                    reason = dead_reason.get(int(rs[0]), "") if len(rs) else "not used in the forward"
                    self.nonprunable.append(NonPrunable(fqn, d, size, reason))
                continue
            c = int(comp[r[lmask][0]])
            if c not in comp_to_gid:
                comp_to_gid[c] = len(groups)
                groups.append(Group(len(groups), [], 0, []))
            g = comp_to_gid[c]
            grp = groups[g]
            new = r[lmask & (gid_of_root[r] < 0)]
            if len(new):  # the distinct new roots in order of first position become the next channels
                uniq, first = np.unique(new, return_index=True)
                fresh = uniq[np.argsort(first)]
                gid_of_root[fresh] = g
                ch_of_root[fresh] = grp.width + np.arange(len(fresh))
                grp.width += len(fresh)
            ch = np.where(lmask, ch_of_root[r], -1)
            rl = "producer" if producer[start] else ("consumer" if consumer[start] else "other")
            grp.members.append(Member(fqn, d, size, ch, rl))
        for g in groups:
            g.members.sort(key=lambda m: (m.role != "producer", m.role != "other"))
            g.name = g.members[0].fqn + f"[{g.members[0].dim}]"
        for atoms, reason in rec.approx:
            for g in np.unique(gid_of_root[root[atoms]]).tolist():
                if g >= 0 and reason not in groups[g].approximate:
                    groups[g].approximate.append(reason)
        self.groups = groups
        self.gid_of_root = gid_of_root
        self.ch_of_root = ch_of_root
        self.offsets = np.cumsum([0] + [g.width for g in groups])
        self._build_cost()

    def is_live(self, labels: np.ndarray) -> bool:
        """Whether any atom of ``labels`` belongs to a prunable group."""
        a = labels[labels >= 0]
        return bool(len(a)) and bool((self.gid_of_root[self.root[a]] >= 0).any())

    def prunable_positions(self) -> int:
        """Parameter and buffer positions (summed over members) that some group can remove."""
        return sum(int((m.channel >= 0).sum()) for g in self.groups for m in g.members)

    # ---- cost model ------------------------------------------------------------------------------
    def _flat_index(self, arr: np.ndarray) -> np.ndarray:
        """Flat channel index (offsets[group] + channel) of every removable position of a label array."""
        a = arr[arr >= 0]
        if not len(a):
            return np.zeros(0, np.int64)
        r = self.root[a]
        g = self.gid_of_root[r]
        m = g >= 0
        return self.offsets[g[m]] + self.ch_of_root[r[m]]

    def _build_cost(self):
        rec = self.rec
        self.mac_terms = []  # (fqn, [(size, flat idx) or int])
        for op in rec.mac_ops:
            fs = []
            for f in op.factors:
                if isinstance(f, (int, np.integer)):
                    fs.append(int(f))
                else:
                    idx = self._flat_index(f)
                    fs.append((len(f), idx) if len(idx) else len(f))
            self.mac_terms.append((op.fqn, fs))
        # every parameter tensor once: per dim (size, flat idx)
        by_fqn: dict[str, list] = {}
        for fqn, d, start, size in rec.param_dims:
            by_fqn.setdefault(fqn, []).append((d, start, size))
        self.param_terms = []
        seen = set()
        for fqn, t in rec.tensors.items():
            if id(t) in seen or not isinstance(t, torch.nn.Parameter):
                continue
            seen.add(id(t))
            dims = by_fqn.get(fqn)
            if dims is None:
                self.param_terms.append((fqn, [int(t.numel())]))
                continue
            fs = []
            for d, start, size in sorted(dims):
                idx = self._flat_index(np.arange(start, start + size))
                fs.append((size, idx) if len(idx) else size)
            self.param_terms.append((fqn, fs))

    def n_channels(self) -> int:
        return int(self.offsets[-1])

    @staticmethod
    def _eval(terms, removed: np.ndarray | None, per: bool = False):
        total = 0
        per_fqn: dict[str, int] = {}
        for fqn, fs in terms:
            v = 1
            for f in fs:
                if isinstance(f, int):
                    v *= f
                else:
                    size, idx = f
                    v *= size - (int(removed[idx].sum()) if removed is not None else 0)
            total += v
            if per:
                per_fqn[fqn] = per_fqn.get(fqn, 0) + v
        return (total, per_fqn) if per else total

    def macs(self, removed: np.ndarray | None = None) -> int:
        """Exact MACs after removing the flat channels marked in ``removed`` (None: the traced model)."""
        return self._eval(self.mac_terms, removed)

    def macs_per_module(self, removed=None) -> dict:
        return self._eval(self.mac_terms, removed, per=True)[1]

    def params(self, removed: np.ndarray | None = None) -> int:
        return self._eval(self.param_terms, removed)

    def removed_flat(self, removal: dict) -> np.ndarray:
        """``{group id: channel indices}`` -> flat boolean mask over all channels."""
        out = np.zeros(self.n_channels(), bool)
        for g, chans in removal.items():
            if len(chans):
                out[self.offsets[g] + np.asarray(chans, dtype=np.int64)] = True
        return out


def build_graph(model: torch.nn.Module, example_inputs, *, ignore_modules: dict | None = None,
                fast: bool = False, keep_outputs="all") -> Graph:
    """Trace ``model`` on ``example_inputs`` and derive its channel groups (changes nothing).

    A reshape that splits one channel dim over several dims is read with the outer dim as the unit (whole
    attention heads). When that unit ends up non-prunable at some such reshapes, the model is traced a
    second time with the innermost dim as the unit there (a selective-kernel block splits its logits into
    ``[paths, channels]`` and multiplies per channel); the reading that leaves more parameter positions
    prunable is kept. Either reading is exact: it only decides which positions form one channel.

    ``fast``: trace without the arithmetic of weight-reading ops (see ``trace.record``); the caller must
    check ``graph.rec.ops`` against a real forward before trusting the graph. ``keep_outputs``: the outputs
    whose shapes are kept (``"all"``, or top-level output names/indices); the others may narrow.
    """
    rec, out = record(model, example_inputs, ignore_modules=ignore_modules, fast=fast, keep_outputs=keep_outputs)
    graph = Graph(rec, out)
    stuck = frozenset(op for op, lab in rec.split_units if not graph.is_live(lab))
    if not stuck:
        return graph
    rec2, out2 = record(model, example_inputs, ignore_modules=ignore_modules, inner_unit=stuck, fast=fast,
                        keep_outputs=keep_outputs)
    other = Graph(rec2, out2)
    return other if other.prunable_positions() > graph.prunable_positions() else graph
