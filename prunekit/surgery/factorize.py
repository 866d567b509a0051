"""A Linear / Conv2d layer replaced by three smaller layers acting in a rotated basis (EigenDamage's form).

Given orthogonal bases ``Q_A`` of the layer's inputs and ``Q_S`` of its outputs, the layer's weight in the
rotated basis is ``W* = Q_S^T W Q_A`` (for a conv, at every kernel offset), and ``W = Q_S W* Q_A^T``. Keeping
only some input directions (columns of ``Q_A``) and some output directions (columns of ``Q_S``) gives a real,
smaller module: ``rot_in`` (``Q_A`` restricted, a Linear / 1x1 conv), ``core`` (``W*`` restricted, a Linear /
the layer's k x k conv) and ``rot_out`` (``Q_S`` restricted, a Linear / 1x1 conv). Its input and output shapes
are the layer's, so it drops into any graph (residual sums included) without touching its neighbours.

A Linear layer's bias can be folded into the input basis as a constant last coordinate (``bias_in_A``): then
``rot_in`` carries it as its bias. Otherwise the bias stays whole on ``rot_out``.

:func:`replace` swaps layers for their factorised forms in one transaction (any error, or a forward that
fails on ``example_inputs``, leaves the model as it was) and skips a layer whose factorised form would have
more parameters than the layer itself.

Example:
    >>> import torch
    >>> from torch import nn
    >>> lin = nn.Linear(3, 2)
    >>> f = Factorized.from_layer(lin, torch.eye(4, dtype=torch.float64), torch.eye(2, dtype=torch.float64),
    ...                           bias_in_A=True)
    >>> x = torch.randn(5, 3)
    >>> torch.allclose(f(x), lin(x), atol=1e-6)
    True
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["Factorized", "HingeConv", "BasisConv", "rotate", "replace", "factorized_cost", "layer_cost", "basis_cost"]


def _weight_matrix(layer: nn.Module, bias_in_A: bool) -> torch.Tensor:
    """The layer's weight, float64: ``[out, in (+1 bias column)]`` (Linear) or ``[out, in, kh, kw]`` (Conv2d)."""
    w = layer.weight.detach().double()
    if isinstance(layer, nn.Linear) and bias_in_A:
        b = layer.bias.detach().double() if layer.bias is not None else w.new_zeros(w.shape[0])
        w = torch.cat([w, b[:, None]], 1)
    return w


def rotate(layer: nn.Module, Q_A: torch.Tensor, Q_S: torch.Tensor, bias_in_A: bool = False) -> torch.Tensor:
    """``W* = Q_S^T W Q_A`` (float64); for a conv, at every kernel offset: ``[out', in', kh, kw]``."""
    w = _weight_matrix(layer, bias_in_A)
    Q_A, Q_S = Q_A.double().cpu(), Q_S.double().cpu()
    w = w.cpu()
    if w.dim() == 2:
        return Q_S.T @ w @ Q_A
    return torch.einsum("oikl,os,ia->sakl", w, Q_S, Q_A)


def unrotate(w_star: torch.Tensor, Q_A: torch.Tensor, Q_S: torch.Tensor) -> torch.Tensor:
    """``Q_S W* Q_A^T``: the weight back in the original basis (inverse of :func:`rotate` for full bases)."""
    if w_star.dim() == 2:
        return Q_S @ w_star @ Q_A.T
    return torch.einsum("sakl,os,ia->oikl", w_star, Q_S, Q_A)


class Factorized(nn.Module):
    """``rot_out(core(rot_in(x)))``: a Linear / Conv2d layer in a rotated, restricted basis (module docstring).

    ``kind`` is ``"linear"`` or ``"conv"``; ``in_features`` / ``out_features`` the replaced layer's widths and
    ``rank_in`` / ``rank_out`` the kept input / output directions."""

    def __init__(self, rot_in: nn.Module, core: nn.Module, rot_out: nn.Module):
        super().__init__()
        self.rot_in, self.core, self.rot_out = rot_in, core, rot_out
        self.kind = "conv" if isinstance(core, nn.Conv2d) else "linear"

    @property
    def rank_in(self) -> int:
        return self.core.in_channels if self.kind == "conv" else self.core.in_features

    @property
    def rank_out(self) -> int:
        return self.core.out_channels if self.kind == "conv" else self.core.out_features

    def forward(self, x):
        return self.rot_out(self.core(self.rot_in(x)))

    @classmethod
    def shell(cls, layer: nn.Module, rank_in: int = 1, rank_out: int = 1, bias_in_A: bool = False) -> "Factorized":
        """An uninitialised factorised form of ``layer`` with the given ranks (for loading saved weights)."""
        dd = {"device": layer.weight.device, "dtype": layer.weight.dtype}
        has_bias = layer.bias is not None
        if isinstance(layer, nn.Linear):
            rot_in = nn.Linear(layer.in_features, rank_in, bias=bias_in_A, **dd)
            core = nn.Linear(rank_in, rank_out, bias=False, **dd)
            rot_out = nn.Linear(rank_out, layer.out_features, bias=has_bias and not bias_in_A, **dd)
        elif isinstance(layer, nn.Conv2d) and layer.groups == 1 and not isinstance(layer.padding, str):
            rot_in = nn.Conv2d(layer.in_channels, rank_in, 1, bias=False, **dd)
            core = nn.Conv2d(rank_in, rank_out, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                             dilation=layer.dilation, bias=False, padding_mode=layer.padding_mode, **dd)
            rot_out = nn.Conv2d(rank_out, layer.out_channels, 1, bias=has_bias, **dd)
        else:
            raise ConfigError(f"a factorised layer replaces nn.Linear or nn.Conv2d (groups=1, numeric padding), "
                              f"not {type(layer).__name__}; leave it out (ignore=[...])")
        return cls(rot_in, core, rot_out)

    @classmethod
    def from_layer(cls, layer: nn.Module, Q_A: torch.Tensor, Q_S: torch.Tensor, keep_in=None, keep_out=None, *,
                   bias_in_A: bool = False, w_star: torch.Tensor | None = None) -> "Factorized":
        """The factorised form of ``layer`` keeping columns ``keep_in`` of ``Q_A`` and ``keep_out`` of ``Q_S``
        (all when None). ``Q_A`` is ``[in (+1), in (+1)]`` (the +1 when a Linear's bias is in the input basis,
        ``bias_in_A``), ``Q_S`` ``[out, out]``; ``w_star`` is :func:`rotate`'s result if already computed."""
        if bias_in_A and not isinstance(layer, nn.Linear):
            raise ConfigError("bias_in_A=True covers nn.Linear only; a conv bias stays on the output rotation")
        d_in = _weight_matrix(layer, bias_in_A).shape[1]
        if Q_A.shape != (d_in, d_in) or Q_S.shape != (layer.weight.shape[0],) * 2:
            raise ConfigError(f"Q_A {tuple(Q_A.shape)} / Q_S {tuple(Q_S.shape)} do not fit the layer's weight "
                              f"{tuple(layer.weight.shape)} (bias_in_A={bias_in_A}): pass square bases of its "
                              f"input and output dims")
        keep_in = torch.arange(d_in) if keep_in is None else torch.as_tensor(keep_in, dtype=torch.long)
        keep_out = torch.arange(Q_S.shape[0]) if keep_out is None else torch.as_tensor(keep_out, dtype=torch.long)
        if not keep_in.numel() or not keep_out.numel():
            raise ConfigError("keep_in / keep_out: keep at least one direction on each side of a factorised layer")
        if w_star is None:
            w_star = rotate(layer, Q_A, Q_S, bias_in_A)
        f = cls.shell(layer, keep_in.numel(), keep_out.numel(), bias_in_A)
        qa, qs = Q_A.double().cpu()[:, keep_in], Q_S.double().cpu()[:, keep_out]
        core = w_star[keep_out][:, keep_in]
        with torch.no_grad():
            if f.kind == "linear":
                n_in = layer.in_features
                f.rot_in.weight.copy_(qa[:n_in].T)
                if bias_in_A:
                    f.rot_in.bias.copy_(qa[n_in])
                f.core.weight.copy_(core)
                f.rot_out.weight.copy_(qs)
            else:
                f.rot_in.weight.copy_(qa.T[:, :, None, None])
                f.core.weight.copy_(core)
                f.rot_out.weight.copy_(qs[:, :, None, None])
            if f.rot_out.bias is not None:
                f.rot_out.bias.copy_(layer.bias.detach())
        return f


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def layer_cost(layer: nn.Module, out_positions: int = 1) -> tuple[int, int]:
    """``(params, MACs)`` of a Linear / Conv2d layer, MACs per example with ``out_positions`` output positions
    (prunekit.measure's convention: bias adds no MAC)."""
    return _count(layer), int(layer.weight.numel() * out_positions)


def factorized_cost(layer: nn.Module, rank_in: int, rank_out: int, in_positions: int = 1, out_positions: int = 1,
                    bias_in_A: bool = False) -> tuple[int, int]:
    """``(params, MACs)`` the factorised form of ``layer`` with these ranks would have (the input rotation runs
    at the input's ``in_positions``, the core and the output rotation at ``out_positions``)."""
    n_out = layer.weight.shape[0]
    n_in = layer.weight.shape[1]
    k = layer.weight[0, 0].numel()  # kernel positions (1 for a Linear)
    params = n_in * rank_in + rank_in * rank_out * k + rank_out * n_out
    params += rank_in if bias_in_A else 0
    params += n_out if (layer.bias is not None and not bias_in_A) else 0
    macs = n_in * rank_in * in_positions + (rank_in * rank_out * k + rank_out * n_out) * out_positions
    return int(params), int(macs)


def replace(model: nn.Module, new: dict, *, skip_larger: bool = True, example_inputs=None) -> list:
    """Put ``new[fqn]`` (a :class:`Factorized`) in place of the layer at ``fqn``; returns the fqns replaced.

    With ``skip_larger`` a layer whose factorised form has more parameters than the layer keeps the layer
    (EigenDamage's rule). With ``example_inputs`` the model runs one forward afterwards. Any error leaves the
    model exactly as it was."""
    named = dict(model.named_modules())
    done, replaced = [], []
    try:
        for fqn, f in new.items():
            old = named.get(fqn)
            if not fqn or old is None:
                raise ConfigError(f"replace: {fqn!r} is not a submodule of the model; name layers by their path in "
                                  f"model.named_modules()")
            if not isinstance(f, Factorized):
                raise ConfigError(f"replace: new[{fqn!r}] is a {type(f).__name__}, not a Factorized")
            if skip_larger and _count(f) > _count(old):
                log.info("factorised %s has %d > %d parameters: kept as it is", fqn, _count(f), _count(old))
                continue
            parent_name, _, attr = fqn.rpartition(".")
            parent = named[parent_name] if parent_name else model
            done.append((parent, attr, old))
            setattr(parent, attr, f)
            replaced.append(fqn)
        if example_inputs is not None and replaced:
            modes = {m: m.training for m in model.modules()}
            model.eval()
            try:
                with torch.no_grad():
                    model(*example_inputs) if isinstance(example_inputs, tuple) else model(example_inputs)
            finally:
                for m, t in modes.items():
                    m.training = t
    except BaseException:
        for parent, attr, old in reversed(done):
            setattr(parent, attr, old)
        raise
    return replaced


class HingeConv(nn.Module):
    """``A (W * x)``: a conv with ``r`` basis filters followed by a 1x1 conv ``A`` (``out x r``) with the bias.

    :meth:`from_conv` initialises it from a Conv2d by SVD of the filters flattened to rows (``W = U S V^T``:
    orthonormal basis ``V^T``, ``A = U S``, so column ``j`` of ``A`` has norm ``s_j`` and removing the smallest
columns is a truncated SVD), so it computes what the conv did. :meth:`fold` returns the single conv
    ``W' = A W``, ``b' = b`` (exact up to rounding).
    """

    def __init__(self, basis: nn.Conv2d, A: nn.Conv2d):
        super().__init__()
        self.basis, self.A = basis, A

    def forward(self, x):
        return self.A(self.basis(x))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int | None = None) -> "HingeConv":
        """The SVD form of ``conv``; with ``rank``, only the ``rank`` largest singular directions (truncated SVD:
        the re-synthesised filters are the best rank-``rank`` approximation of the conv's filters)."""
        if conv.groups != 1:
            raise ConfigError(f"HingeConv: a grouped conv (groups={conv.groups}) cannot be decomposed; ignore it")
        w = conv.weight.detach().double()
        n = w.shape[0]
        u, s, vt = torch.linalg.svd(w.reshape(n, -1), full_matrices=False)
        if rank is not None:
            if not 1 <= rank <= s.numel():
                raise ConfigError(f"HingeConv: rank={rank} must be in 1..{s.numel()} (the rank of the conv's filters)")
            u, s, vt = u[:, :rank], s[:rank], vt[:rank]
        r = s.numel()
        kw = dict(device=conv.weight.device, dtype=conv.weight.dtype)
        basis = nn.Conv2d(conv.in_channels, r, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                          bias=False, padding_mode=conv.padding_mode, **kw)
        A = nn.Conv2d(r, n, 1, bias=conv.bias is not None, **kw)
        with torch.no_grad():
            basis.weight.copy_(vt.reshape(r, *w.shape[1:]))
            A.weight.copy_((u * s).reshape(n, r, 1, 1))
            if conv.bias is not None:
                A.bias.copy_(conv.bias.detach())
        return cls(basis, A)

    def fold(self) -> nn.Conv2d:
        b, a = self.basis, self.A
        conv = nn.Conv2d(b.in_channels, a.out_channels, b.kernel_size, b.stride, b.padding, b.dilation,
                         bias=a.bias is not None, padding_mode=b.padding_mode, device=b.weight.device,
                         dtype=b.weight.dtype)
        with torch.no_grad():
            w = torch.einsum("or,rikl->oikl", a.weight.detach().double()[:, :, 0, 0], b.weight.detach().double())
            conv.weight.copy_(w)
            if a.bias is not None:
                conv.bias.copy_(a.bias.detach())
        return conv

    def split_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def folded_params(self) -> int:
        return self.A.out_channels * self.basis.weight[0].numel() + (self.A.out_channels if self.A.bias is not None
                                                                     else 0)


class BasisConv(nn.Module):
    """A k x k conv as a small basis shared by input-channel groups, then a 1x1 mix (Li et al., ICCV 2019).

    The conv's ``C_in`` input channels are split into ``g = C_in / split`` groups of ``split`` channels; every
    group is convolved with the *same* ``n_basis`` basis filters (``basis``: ``[n_basis, split, kh, kw]``), giving
    ``g * n_basis`` maps (group ``i``'s maps at channels ``i * n_basis ..``), and a 1x1 conv ``mix``
    (``g * n_basis -> C_out``, the conv's bias) combines them. The basis runs once on each group's slice of the
    input (the reference code's form; on CPU at batch 1 faster than one grouped conv over the repeated basis),
    so the engine counts ``g * n_basis * split * kh * kw`` MACs per output position.
    Parameters: ``n_basis * split * kh * kw + g * n_basis * C_out`` (+ bias) instead of ``C_out * C_in * kh * kw``.

    :meth:`from_conv` initialises it by SVD: the ``C_out * g`` filter slices (each ``split * kh * kw``) are the rows
    of ``M = U S V^T``; the basis is the first ``n_basis`` rows of ``V^T`` and ``mix[o, i * n_basis + j] =
    (U S)[(o, i), j]``, so at full rank it computes what the conv did and at a lower rank the folded weight
    misses exactly the discarded singular values' energy. :meth:`fold` returns that single conv.
    """

    def __init__(self, basis: torch.Tensor, mix: nn.Conv2d, in_channels: int, stride, padding, dilation,
                 padding_mode: str = "zeros"):
        super().__init__()
        if basis.dim() != 4 or in_channels % basis.shape[1]:
            raise ConfigError(f"BasisConv: basis of shape {tuple(basis.shape)} does not split {in_channels} input "
                              f"channels into equal groups; the split must divide the input channels")
        if padding_mode != "zeros":
            raise ConfigError(f"BasisConv: padding_mode={padding_mode!r}; only zero padding is supported")
        self.basis = nn.Parameter(basis)
        self.mix = mix
        self.in_channels = int(in_channels)
        self.split = int(basis.shape[1])
        self.n_basis = int(basis.shape[0])
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)

    @property
    def n_groups(self) -> int:
        return self.in_channels // self.split

    @property
    def out_channels(self) -> int:
        return self.mix.out_channels

    def forward(self, x):
        conv = torch.nn.functional.conv2d
        if self.n_groups == 1:
            return self.mix(conv(x, self.basis, None, self.stride, self.padding, self.dilation))
        maps = [conv(xi, self.basis, None, self.stride, self.padding, self.dilation)
                for xi in torch.split(x, self.split, dim=1)]
        return self.mix(torch.cat(maps, 1))

    @staticmethod
    def check(conv: nn.Module, split: int) -> None:
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or isinstance(conv.padding, str) \
                or conv.padding_mode != "zeros":
            raise ConfigError(f"BasisConv replaces an nn.Conv2d with groups=1, numeric zero padding, not "
                              f"{conv!r}; leave it out (ignore=[...])")
        if split < 1 or conv.in_channels % split:
            raise ConfigError(f"BasisConv: split={split} does not divide the {conv.in_channels} input channels of "
                              f"the conv; pick a divisor")

    @classmethod
    def shell(cls, conv: nn.Conv2d, split: int, n_basis: int) -> "BasisConv":
        """An uninitialised basis form of ``conv`` (for loading saved weights)."""
        cls.check(conv, split)
        dd = {"device": conv.weight.device, "dtype": conv.weight.dtype}
        g = conv.in_channels // split
        basis = torch.zeros(n_basis, split, *conv.kernel_size, **dd)
        mix = nn.Conv2d(g * n_basis, conv.out_channels, 1, bias=conv.bias is not None, **dd)
        return cls(basis, mix, conv.in_channels, conv.stride, conv.padding, conv.dilation, conv.padding_mode)

    @staticmethod
    def slices(conv: nn.Conv2d, split: int) -> torch.Tensor:
        """``[C_out * g, split * kh * kw]`` float64: the filters cut into input-channel groups, row ``o * g + i``."""
        w = conv.weight.detach().double().cpu()
        return w.reshape(w.shape[0] * (w.shape[1] // split), -1)

    @staticmethod
    def max_rank(conv: nn.Conv2d, split: int) -> int:
        return min(conv.out_channels * (conv.in_channels // split), split * conv.weight[0, 0].numel())

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, split: int, n_basis: int) -> "BasisConv":
        """The SVD-initialised basis form with ``n_basis`` basis filters (at most :meth:`max_rank`)."""
        cls.check(conv, split)
        if not 1 <= n_basis <= cls.max_rank(conv, split):
            raise ConfigError(f"BasisConv: n_basis={n_basis} must be in 1..{cls.max_rank(conv, split)} (the rank of "
                              f"the conv's filter slices at split={split})")
        u, s, vt = torch.linalg.svd(cls.slices(conv, split), full_matrices=False)
        g, n_out = conv.in_channels // split, conv.out_channels
        f = cls.shell(conv, split, n_basis)
        coef = (u[:, :n_basis] * s[:n_basis]).reshape(n_out, g * n_basis)  # row o: groups i, then basis j
        with torch.no_grad():
            f.basis.copy_(vt[:n_basis].reshape(n_basis, split, *conv.kernel_size))
            f.mix.weight.copy_(coef[:, :, None, None])
            if conv.bias is not None:
                f.mix.bias.copy_(conv.bias.detach())
        return f

    def folded_weight(self) -> torch.Tensor:
        """``[C_out, C_in, kh, kw]`` float64: ``W[o, i*split + c] = sum_j mix[o, i*n_basis + j] basis[j, c]``."""
        a = self.mix.weight.detach().double()[:, :, 0, 0].reshape(self.out_channels, self.n_groups, self.n_basis)
        w = torch.einsum("oij,jckl->oickl", a, self.basis.detach().double())
        return w.reshape(self.out_channels, self.in_channels, *self.basis.shape[2:])

    def fold(self) -> nn.Conv2d:
        """The single conv this module computes (exact up to rounding)."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, tuple(self.basis.shape[2:]), self.stride, self.padding,
                         self.dilation, bias=self.mix.bias is not None, device=self.basis.device,
                         dtype=self.basis.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.folded_weight())
            if self.mix.bias is not None:
                conv.bias.copy_(self.mix.bias.detach())
        return conv


def basis_cost(conv: nn.Conv2d, split: int, n_basis: int, out_positions: int = 1) -> tuple[int, int]:
    """``(params, MACs)`` of the :class:`BasisConv` form of ``conv`` (MACs per example at ``out_positions``)."""
    g = conv.in_channels // split
    k = conv.weight[0, 0].numel()
    params = n_basis * split * k + g * n_basis * conv.out_channels + (conv.out_channels if conv.bias is not None
                                                                      else 0)
    macs = (g * n_basis * split * k + g * n_basis * conv.out_channels) * out_positions
    return int(params), int(macs)
