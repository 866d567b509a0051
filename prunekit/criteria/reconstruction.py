"""Reconstruction criteria: ``thinet`` (Luo et al. 2017) and ``cp-lasso`` (He et al. 2017), and the
least-squares re-fit of the next layer that both papers apply after the cut.

Jian-Hao Luo, Jianxin Wu, Weiyao Lin, "ThiNet: A Filter Level Pruning Method for Deep Neural Network
Compression", ICCV 2017, https://arxiv.org/abs/1707.06342: a layer's filters are judged by the next
layer. Each sampled output value of the next layer is a sum of per-input-channel contributions; ThiNet
greedily builds the set of channels whose summed contribution stays closest to zero, so removing them
changes the next layer least, then rescales the kept channels by least squares.
Yihui He, Xiangyu Zhang, Jian Sun, "Channel Pruning for Accelerating Very Deep Neural Networks", ICCV 2017,
https://arxiv.org/abs/1707.06168: a LASSO over per-channel coefficients picks the input channels that
reconstruct the next layer's output, then the kept weights are re-fitted by least squares.

As criteria both return one score per channel (higher = keep): ThiNet's greedy removal order and the
LASSO path's order of entry (a channel that stays non-zero under a stronger penalty is kept longer). The
re-fit changes the consumer weights, so it is a separate step run after surgery:
:func:`record_io` before the cut, :func:`least_squares_refit_` after it.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ._base import ChannelView, random_generator, register_criterion
from ._stats import _cached, per_channel, readers
from ..errors import ConfigError
from .collect import collect

log = logging.getLogger(__name__)

N_SAMPLES = 2000  # sampled (image, output channel, position) triples per reading layer


# ---- per-channel contributions ---------------------------------------------------------------------
def _unfold(mod: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, C, k*k, L]`` input patches of ``mod``."""
    u = F.unfold(x, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride)
    return u.reshape(x.shape[0], x.shape[1], -1, u.shape[-1])


def contributions(mod: nn.Module, weight: torch.Tensor, x: torch.Tensor, n_samples: int,
                  gen: torch.Generator) -> torch.Tensor:
    """``[S, C]``: the part of sampled output values of ``mod`` contributed by each input channel.

    ``weight`` is the module weight (``[O, C, kh, kw]`` or ``[O, C*k]``), ``x`` its input (``[N, C, H, W]``
    or ``[N, C, k]``). Bias is left out: it does not depend on the channels.
    """
    w = weight.detach().to(x.device).double()
    if isinstance(mod, nn.Conv2d):
        u = _unfold(mod, x.double())  # [N, C, kk, L]
        n, c, kk, L = u.shape
        o = w.shape[0]
        idx_n = torch.randint(n, (n_samples,), generator=gen)
        idx_l = torch.randint(L, (n_samples,), generator=gen)
        idx_o = torch.randint(o, (n_samples,), generator=gen)
        patches = u[idx_n, :, :, idx_l]  # [S, C, kk]
        return (patches * w.reshape(o, c, kk)[idx_o]).sum(2)
    n, c, k = x.shape
    o = w.shape[0]
    idx_n = torch.randint(n, (n_samples,), generator=gen)
    idx_o = torch.randint(o, (n_samples,), generator=gen)
    return (x.double()[idx_n] * w.reshape(o, c, k)[idx_o]).sum(2)


def _group_contributions(view: ChannelView) -> torch.Tensor | None:
    """``[S, width]`` contributions of every reading layer, sampled with the view's seed."""
    def compute():
        gen = random_generator(view)
        parts = [contributions(c.module, c.module.weight, x, N_SAMPLES, gen) for c, x in readers(view)]
        return torch.cat(parts) if parts else None

    return _cached(view, "contrib", compute)


# ---- ThiNet -------------------------------------------------------------------------------------------------
def thinet_order(z: torch.Tensor) -> torch.Tensor:
    """Greedy removal order over the columns of ``z`` ``[S, C]``: each step adds the channel that keeps
    ``||sum of removed contributions||^2`` smallest. Returns ``[C]`` channel indices, first removed first.

    Example:
        >>> z = torch.tensor([[1., -1., 3.], [1., -1., 0.]])
        >>> thinet_order(z).tolist()   # 0 and 1 cancel: removing both changes nothing
        [0, 1, 2]
    """
    z = z.double()
    c = z.shape[1]
    removed = torch.zeros(c, dtype=torch.bool)
    r = torch.zeros(z.shape[0], dtype=torch.float64)
    sq = z.pow(2).sum(0)
    order = []
    for _ in range(c):
        err = 2 * (r @ z) + sq  # ||r + z_c||^2 - ||r||^2
        err[removed] = float("inf")
        j = int(torch.argmin(err))
        order.append(j)
        removed[j] = True
        r = r + z[:, j]
    return torch.tensor(order, dtype=torch.long)


def rank_from_order(order: torch.Tensor) -> torch.Tensor:
    s = torch.empty(len(order), dtype=torch.float64)
    s[order] = torch.arange(1, len(order) + 1, dtype=torch.float64)
    return s


@register_criterion("thinet", needs=("activations",))
def score_thinet(view: ChannelView) -> torch.Tensor:
    z = _group_contributions(view)
    return per_channel(view, None if z is None else _cached(view, "thinet", lambda: rank_from_order(thinet_order(z))))


# ---- LASSO channel selection ---------------------------------------------------------------------------
def lasso_fista(gram: torch.Tensor, corr: torch.Tensor, lam: float, beta: torch.Tensor, iters: int = 300,
                tol: float = 1e-10, step: float | None = None) -> torch.Tensor:
    """FISTA for ``min 1/2 b'Gb - c'b + lam*|b|_1`` (the LASSO in Gram form), warm-started at ``beta``."""
    if step is None:
        step = 1.0 / float(torch.linalg.eigvalsh(gram).max().clamp_min(1e-12))
    x, v, t = beta.clone(), beta.clone(), 1.0
    for _ in range(iters):
        g = v - step * (gram @ v - corr)
        x_new = torch.sign(g) * (g.abs() - step * lam).clamp_min(0.0)
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        v = x_new + ((t - 1) / t_new) * (x_new - x)
        done = float((x_new - x).abs().max()) < tol
        x, t = x_new, t_new
        if done:
            break
    return x


def lasso_path_scores(z: torch.Tensor, n_lambdas: int = 20, ratio: float = 1e-3) -> torch.Tensor:
    """Score ``[C]`` from the LASSO path reconstructing ``y = z.sum(1)`` from the columns of ``z``.

    Channel c's score is the number of path points (strongest penalty first) at which its coefficient is
    non-zero, plus ``|beta_c|`` at the weakest penalty scaled into [0, 1) to break ties.
    """
    z = z.double()
    y = z.sum(1)
    s = z.shape[0]
    gram = z.t() @ z / s
    corr = z.t() @ y / s
    lam_max = float(corr.abs().max())
    beta = torch.zeros(z.shape[1], dtype=torch.float64)
    alive = torch.zeros(z.shape[1], dtype=torch.float64)
    if lam_max <= 0:
        return alive
    step = 1.0 / float(torch.linalg.eigvalsh(gram).max().clamp_min(1e-12))
    for lam in torch.logspace(0, torch.log10(torch.tensor(ratio)).item(), n_lambdas).tolist():
        beta = lasso_fista(gram, corr, lam * lam_max, beta, iters=150, step=step)
        alive += (beta != 0).double()
    b = beta.abs()
    return alive + 0.999 * b / b.max().clamp_min(1e-12)


@register_criterion("cp-lasso", needs=("activations",))
def score_cp_lasso(view: ChannelView) -> torch.Tensor:
    z = _group_contributions(view)
    return per_channel(view, None if z is None else _cached(view, "lasso", lambda: lasso_path_scores(z)))


# ---- the re-fit after surgery ---------------------------------------------------------------------------------
def _run(model: nn.Module, calib, fqns: list, want: str) -> dict:
    """Inputs (``want="in"``) or outputs (``"out"``) of modules ``fqns`` over ``calib`` (eval mode, no grad),
    kept on the CPU where the solves run."""
    cal = collect(model, calib, **{"inputs" if want == "in" else "outputs": fqns})
    rec = cal.inputs if want == "in" else cal.outputs
    return {f: torch.cat(rec[f]) for f in fqns if rec.get(f)}


def refittable(model: nn.Module, fqns) -> list:
    mods = dict(model.named_modules())
    return [f for f in fqns if isinstance(mods.get(f), nn.Linear) or
            (isinstance(mods.get(f), nn.Conv2d) and mods[f].groups == 1)]


def record_io(model: nn.Module, calib, fqns) -> dict:
    """Outputs of the layers ``fqns`` over ``calib`` on the model as it is now (the reconstruction target)."""
    return _run(model, calib, refittable(model, fqns), "out")


def _design(mod: nn.Module, x: torch.Tensor, y: torch.Tensor, n_samples: int, gen: torch.Generator):
    """Sampled rows: patches ``[S, C, k]`` and targets minus bias ``[S, O]``."""
    x, y = x.double(), y.double()
    b = mod.bias.detach().cpu().double() if mod.bias is not None else None
    if isinstance(mod, nn.Conv2d):
        u = _unfold(mod, x)  # [N, C, kk, L]
        yy = y.reshape(y.shape[0], y.shape[1], -1)  # [N, O, L]
        idx_n = torch.randint(u.shape[0], (n_samples,), generator=gen)
        idx_l = torch.randint(u.shape[-1], (n_samples,), generator=gen)
        p, t = u[idx_n, :, :, idx_l], yy[idx_n, :, idx_l]
    else:
        idx_n = torch.randperm(x.shape[0], generator=gen)[:n_samples]  # distinct images
        p, t = x[idx_n].unsqueeze(2), y[idx_n]
    return p, (t - b if b is not None else t), idx_n


def least_squares_refit_(model: nn.Module, calib, targets: dict, *, mode: str = "full", n_samples: int = 4000,
                         ridge: float = 1e-6, seed: int = 0) -> dict:
    """Re-fit the weights of the layers in ``targets`` so they reproduce ``targets[fqn]`` (outputs recorded
    on the unpruned model) from the inputs they now receive. ``mode="full"`` solves least squares for the
    whole kept weight (He et al., with a small ridge); ``"scale"`` fits one factor per input channel (ThiNet).
    The fit uses the samples of three images in four; a layer is only changed when the error on the
    samples of the remaining images drops. Returns ``{fqn: {"mse_before", "mse_after"}}``.
    """
    if mode not in ("full", "scale"):
        raise ConfigError(f"mode={mode!r} is not a re-fit mode; choose 'full' (least squares on the whole "
                          f"weight) or 'scale' (one factor per input channel)")
    mods = dict(model.named_modules())
    gen = torch.Generator().manual_seed(seed)
    out = {}
    new = {}
    saved = {f: mods[f].weight.detach().clone() for f in targets}
    order = [f for f in mods if f in targets]  # forward order: each layer sees its re-fitted predecessors
    for f in order:
        y = targets[f]
        mod, x = mods[f], _run(model, calib, [f], "in").get(f)
        if x is None or x.shape[0] != y.shape[0]:
            continue
        if isinstance(mod, nn.Linear) and x.shape[1] != mod.in_features:
            continue
        p, t, img = _design(mod, x, y, n_samples, gen)  # p [S, C, k], t [S, O], img [S]
        w = mod.weight.detach().cpu().double().reshape(mod.weight.shape[0], p.shape[1], -1)  # [O, C, k]
        held = img % 4 == 0  # samples of every 4th image check the fit, the others make it
        if held.all() or not held.any():
            held = torch.arange(len(img)) % 4 == 0
        p, t, p_val, t_val = p[~held], t[~held], p[held], t[held]
        before = float((torch.einsum("sck,ock->so", p_val, w) - t_val).pow(2).mean())
        if mode == "full":
            a = p.reshape(p.shape[0], -1)  # [S, C*k]
            lhs = a.t() @ a + ridge * torch.eye(a.shape[1], dtype=a.dtype)
            lhs = lhs + 1e-3 * lhs.diagonal().mean() * torch.eye(a.shape[1], dtype=a.dtype)
            w_new = torch.linalg.solve(lhs, a.t() @ t).t().reshape(w.shape)  # [O, C, k]
        else:
            o_s = torch.randint(w.shape[0], (p.shape[0],), generator=gen)  # one output per sample, as ThiNet
            contrib = (p * w[o_s]).sum(2)  # [S, C]
            lhs = contrib.t() @ contrib + ridge * torch.eye(p.shape[1], dtype=p.dtype)
            scale = torch.linalg.solve(lhs, contrib.t() @ t[torch.arange(len(o_s)), o_s])
            w_new = w * scale.view(1, -1, 1)
        after = float((torch.einsum("sck,ock->so", p_val, w_new) - t_val).pow(2).mean())
        out[f] = {"mse_before": before, "mse_after": after}
        if after < before:
            new[f] = w_new.reshape(mod.weight.shape).to(mod.weight.dtype)
            try:
                with torch.no_grad():
                    mod.weight.copy_(new[f])
            except Exception:
                with torch.no_grad():  # leave every layer as it was
                    for g, w in saved.items():
                        mods[g].weight.copy_(w)
                raise
    log.info("least-squares re-fit (%s) of %d layers", mode, len(new))
    return out
