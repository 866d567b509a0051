"""The recurrent Jacobian of ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` layers, and its norm along the all-ones vector.

A recurrent layer maps its state ``h_{t-1}`` to ``h_t``; the temporal Jacobian ``J_t = dh_t/dh_{t-1}`` says how
much information survives one step. ``J_t @ 1`` (a Jacobian-vector product) is obtained from reverse mode alone
by the double-backward trick: with a dummy ``u``, ``g(u) = J_t^T u`` and ``d<g(u), 1>/du = J_t 1``. The layers are
re-run step by step from their own weights (:func:`cell_step`, the equations of the PyTorch docs), so the
objective is differentiable in every weight. Used by the ``rnn-jacobian`` method.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["RECURRENT", "recurrent_modules", "layer_params", "cell_step", "jacobian_ones", "record_inputs",
           "jacobian_objective"]

RECURRENT = (nn.RNN, nn.LSTM, nn.GRU)


def recurrent_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{module_fqn: module}`` of the recurrent layers; bidirectional or projected LSTMs are refused."""
    out = {}
    for fqn, m in model.named_modules():
        if isinstance(m, RECURRENT):
            if m.bidirectional or getattr(m, "proj_size", 0):
                raise ConfigError(f"recurrent layer {fqn!r}: bidirectional={m.bidirectional}, "
                                  f"proj_size={getattr(m, 'proj_size', 0)} is not supported (one direction, no "
                                  f"projection); ignore the layer (ignore=[{fqn!r}])")
            out[fqn] = m
    return out


def layer_params(module: nn.Module, layer: int) -> dict[str, torch.Tensor]:
    """Weights and biases of stacked layer ``layer``: ``w_ih``, ``w_hh``, ``b_ih``, ``b_hh`` (biases may be None)."""
    return {k: getattr(module, f"{n}_l{layer}", None)
            for k, n in (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh"))}


def _lin(x, w, b):
    return x @ w.T + (b if b is not None else 0)


def cell_step(module: nn.Module, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None, p: dict):
    """One step of ``module``'s cell with weights ``p`` (see :func:`layer_params`): returns ``(h, c)``."""
    gi, gh = _lin(x, p["w_ih"], p["b_ih"]), _lin(h, p["w_hh"], p["b_hh"])
    if isinstance(module, nn.LSTM):
        i, f, g, o = (gi + gh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if isinstance(module, nn.GRU):
        ir, iz, in_ = gi.chunk(3, dim=-1)
        hr, hz, hn = gh.chunk(3, dim=-1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return (1 - z) * n + z * h, None
    act = torch.tanh if module.nonlinearity == "tanh" else torch.relu
    return act(gi + gh), None


def jacobian_ones(h_t: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
    """``J 1`` per sample, ``J = dh_t/dh_{t-1}`` (rows of ``[B, H]`` are independent), differentiable further.

    Example (a linear cell h_t = A h_{t-1}: J 1 = the row sums of A):
        >>> a = torch.tensor([[1., 2.], [3., 4.]])
        >>> h0 = torch.ones(1, 2, requires_grad=True)
        >>> jacobian_ones(h0 @ a.T, h0).tolist()
        [[3.0, 7.0]]
    """
    u = torch.zeros_like(h_t, requires_grad=True)
    (g,) = torch.autograd.grad(h_t, h_prev, grad_outputs=u, create_graph=True)  # J^T u, linear in u
    (v,) = torch.autograd.grad(g, u, grad_outputs=torch.ones_like(g), create_graph=True)
    return v


@torch.no_grad()
def record_inputs(model: nn.Module, modules: dict[str, nn.Module], inputs) -> dict[str, torch.Tensor]:
    """The input sequence ``[B, T, F]`` (batch first) each recurrent layer receives on ``inputs``."""
    seen = {}

    def hook(fqn):
        def fn(m, args):
            x = args[0]
            if isinstance(x, nn.utils.rnn.PackedSequence):
                raise ConfigError(f"recurrent layer {fqn!r} got a PackedSequence; rnn-jacobian needs padded "
                                  f"batches of equal length")
            if x.dim() == 2:
                x = x.unsqueeze(0) if m.batch_first else x.unsqueeze(1)
            seen.setdefault(fqn, x if m.batch_first else x.transpose(0, 1))
        return fn

    handles = [m.register_forward_pre_hook(hook(f)) for f, m in modules.items()]
    try:
        model(inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def jacobian_objective(module: nn.Module, x: torch.Tensor, steps: int,
                       params: list[dict] | None = None) -> torch.Tensor:
    """``chi``: mean over the batch and the last ``steps`` steps of ``||J_t 1||_2``, summed over stacked layers.

    ``x``: ``[B, T, F]``; the state starts at zero (the paper's zero initial hidden state); ``J_t`` is taken on
    the hidden output ``h`` (an LSTM's cell state ``c_{t-1}`` held fixed). Differentiable in ``params`` (default:
    the module's own weights).
    """
    params = params if params is not None else [layer_params(module, k) for k in range(module.num_layers)]
    b, t = x.shape[0], x.shape[1]
    chi = x.new_zeros(())
    seq = x
    for p in params:
        h = x.new_zeros(b, module.hidden_size)
        c = x.new_zeros(b, module.hidden_size) if isinstance(module, nn.LSTM) else None
        outs = []
        for s in range(t):
            h_prev = h if h.requires_grad else h.requires_grad_(True)
            h, c = cell_step(module, seq[:, s], h_prev, c, p)
            if s >= t - steps:
                chi = chi + torch.linalg.vector_norm(jacobian_ones(h, h_prev), dim=1).mean() / min(steps, t)
            outs.append(h)
        seq = torch.stack(outs, dim=1)
    return chi
