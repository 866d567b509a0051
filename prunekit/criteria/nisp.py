"""``nisp``: importance propagated back from the final response layer.

Ruichi Yu, Ang Li, Chun-Fu Chen, Jui-Hsin Lai, Vlad I. Morariu, Xintong Han, Mingfei Gao, Ching-Yung Lin,
Larry S. Davis, "NISP: Pruning Networks using Neuron Importance Score Propagation", CVPR 2018,
https://arxiv.org/abs/1711.05908. The neurons of the final response layer (the input of the classifier)
are ranked by Infinite Feature Selection on their responses; every earlier layer inherits importance in
closed form, ``s_k = |W_{k+1}|^T s_{k+1}``, with a conv weight's magnitudes summed over its kernel and
ReLU/pooling passed through. That bounds the change of the final responses when a neuron is removed.

Propagation needs the whole network, which a per-member view does not hold: :func:`nisp_scores` walks the
engine's graph; :func:`prunekit.plan` computes them from its ``calib`` (or takes those of the caller's
:func:`nisp_context`, which carries the options) and hands them to the scoring explicitly (:func:`scorer`);
the registered criterion, called on its own, reads those of the enclosing :func:`nisp_context`. Groups whose
readers feed back into them (residual stages) are resolved by two sweeps from the output backwards.
"""
from __future__ import annotations

import contextlib
import contextvars

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ._base import ChannelView, register_criterion
from .._fqns import module_fqns as _module_fqns
from .._registry import closest
from ..graph import build_graph
from .reconstruction import _run

# the scores of the innermost open nisp_context of this thread/task ({group key: scores [width]}, or None):
# context-local, so concurrent plans in other threads never see them
_CONTEXT_SCORES: contextvars.ContextVar = contextvars.ContextVar("prunekit_nisp_scores", default=None)


def active_scores() -> dict | None:
    """The scores of the enclosing :func:`nisp_context` (this thread/task only), or None."""
    return _CONTEXT_SCORES.get()


def inf_fs(responses: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Infinite Feature Selection (Roffo et al., ICCV 2015) scores ``[d]`` of responses ``[N, d]``.

    Edge weights mix spread and decorrelation, ``a_ij = alpha*max(sd_i, sd_j) + (1-alpha)*(1-|corr_ij|)``
    (spreads scaled to [0, 1]); the score of feature i sums all paths from i, ``((I - rA)^-1 - I) 1`` with
    ``r = 0.9 / spectral radius``. A constant response scores 0.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(500, 3, generator=g) * torch.tensor([1.0, 0.1, 1.0])
        >>> s = inf_fs(x); bool(s[1] < s[0] and s[1] < s[2])
        True
    """
    x = responses.double()
    sd = x.std(0)
    sd = sd / sd.max().clamp_min(1e-12)
    xc = x - x.mean(0)
    norm = xc.norm(dim=0).clamp_min(1e-12)
    corr = (xc.t() @ xc) / (norm[:, None] * norm[None, :])
    a = alpha * torch.maximum(sd[:, None], sd[None, :]) + (1 - alpha) * (1 - corr.abs())
    rho = float(torch.linalg.eigvals(a).abs().max())
    r = 0.9 / max(rho, 1e-12)
    eye = torch.eye(len(sd), dtype=torch.float64)
    s = torch.linalg.inv(eye - r * a) - eye
    return s.sum(1) * (sd > 0).double()


def _key(group) -> tuple:
    return tuple(sorted((m.fqn, m.dim) for m in group.members))


def _kernel_abs(w: torch.Tensor, dim: int) -> torch.Tensor:
    """``|W|`` summed over everything but the output dim and ``dim``: ``[O, P]``."""
    a = w.detach().cpu().double().abs().movedim(dim, 1)
    return a.reshape(a.shape[0], a.shape[1], -1).sum(2)


def nisp_scores(model: nn.Module, example_inputs, calib, *, ignore=(), classifier: str | None = None,
                alpha: float = 0.5, sweeps: int = 2) -> dict:
    """NISP importance of every channel group: ``{group key: np.ndarray [width]}`` (each scaled to mean 1).

    ``classifier`` is the FQN of the layer whose input is the final response layer (default: the last
    ``nn.Linear``). ``calib`` gives the responses Inf-FS ranks.
    """
    mods = dict(model.named_modules())
    if classifier is None:
        linears = [n for n, m in mods.items() if isinstance(m, nn.Linear)]
        if not linears:
            raise ConfigError("nisp: the model has no nn.Linear classifier; pass classifier='<fqn of the layer "
                              "reading the final response layer>'")
        classifier = linears[-1]
    if classifier not in mods:
        hint = closest(classifier, list(mods))
        raise ConfigError(f"nisp: classifier={classifier!r} is not a module of the model" +
                          (f"; did you mean {hint!r}?" if hint else "") + "; give the FQN of the last layer")
    if calib is None:
        raise ConfigError("nisp needs calibration data for the final responses: pass calib=[(inputs, targets)]")
    ignore_modules = _module_fqns(model, ignore, "ignore") if ignore else {}
    graph = build_graph(model, example_inputs, ignore_modules=ignore_modules)
    tensors = graph.rec.tensors
    frl = _run(model, calib, [classifier], "in")[classifier]
    frl = frl.reshape(frl.shape[0], -1)
    frl_scores = inf_fs(frl, alpha)  # [in_features of the classifier]
    out_group = {}  # module fqn -> (group, producer member) for layers whose outputs are group channels
    for g in graph.groups:
        for m in g.producers:
            mf, _, pname = m.fqn.rpartition(".")
            if pname == "weight" and m.dim == 0:
                out_group.setdefault(mf, (g, m))
    scores = {g.id: np.ones(g.width) for g in graph.groups}

    def out_importance(mf: str, n_out: int) -> np.ndarray:
        if mf not in out_group:
            return np.ones(n_out)
        g, m = out_group[mf]
        s = np.ones(n_out)
        ok = m.channel >= 0
        s[np.nonzero(ok)[0]] = scores[g.id][m.channel[ok]]
        return s

    for _ in range(sweeps):
        for g in reversed(graph.groups):
            total = np.zeros(g.width)
            for m in g.members:
                mf, _, pname = m.fqn.rpartition(".")
                if m.role != "consumer" or pname != "weight" or m.dim == 0:
                    continue
                ok = m.channel >= 0
                if mf == classifier:
                    per_pos = frl_scores.numpy() if len(frl_scores) == m.size else np.ones(m.size)
                else:
                    a = _kernel_abs(tensors[m.fqn], m.dim).numpy()  # [O, P]
                    per_pos = out_importance(mf, a.shape[0]) @ a
                np.add.at(total, m.channel[ok], per_pos[ok])
            if total.sum() > 0:
                scores[g.id] = total / total.mean()
    return {_key(g): scores[g.id] for g in graph.groups}


@contextlib.contextmanager
def nisp_context(model: nn.Module, example_inputs, calib, **kwargs):
    """Within the block, criterion ``"nisp"`` scores channels with :func:`nisp_scores` of ``model``.

    Example:
        >>> import torch, prunekit as pk
        >>> from prunekit.testing import models
        >>> m, x = models()["chain"]()
        >>> calib = [(torch.randn(4, *x.shape[1:]), None)]
        >>> with nisp_context(m, x, calib):
        ...     r = pk.prune_(m, example_inputs=x, sparsity=0.5, criterion="nisp")
        >>> r.params_after < r.params_before
        True
    """
    token = _CONTEXT_SCORES.set(nisp_scores(model, example_inputs, calib, **kwargs))
    try:
        yield _CONTEXT_SCORES.get()
    finally:
        _CONTEXT_SCORES.reset(token)


def scorer(table: dict):
    """The per-member score function ``view -> scores`` that reads ``table`` (from :func:`nisp_scores`)."""
    def score(view: ChannelView) -> torch.Tensor:
        return _from_table(table, view)

    return score


def _from_table(table: dict, view: ChannelView) -> torch.Tensor:
    key = _key(view.group) if view.group is not None else None
    s = table.get(key)
    if s is None:
        raise ConfigError(f"criterion='nisp': group of {view.fqn!r} was not in the graph nisp_context traced; "
                          f"open the context with the same model and ignore= as the prune call")
    return torch.as_tensor(s, dtype=torch.float64)[torch.as_tensor(view.channels, dtype=torch.long)]


@register_criterion("nisp")
def score_nisp(view: ChannelView) -> torch.Tensor:
    table = _CONTEXT_SCORES.get()
    if table is None:
        raise ConfigError("criterion='nisp' propagates importance through the whole network: pass calib= to "
                          "pk.plan/pk.prune_ (or run inside `with prunekit.criteria.nisp.nisp_context(model, "
                          "example_inputs, calib):` to set its options), or use the 'nisp' method")
    return _from_table(table, view)
