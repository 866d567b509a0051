"""NISP: prune the neurons whose importance, propagated back from the final response layer, is lowest.

Paper: Ruichi Yu, Ang Li, Chun-Fu Chen, Jui-Hsin Lai, Vlad I. Morariu, Xintong Han, Mingfei Gao, Ching-Yung
Lin, Larry S. Davis, "NISP: Pruning Networks using Neuron Importance Score Propagation", CVPR 2018.
https://arxiv.org/abs/1711.05908

NISP keeps what the network's last features need. The responses of the final response layer (the
classifier's input) are ranked by Infinite Feature Selection; every earlier neuron then receives the
importance that flows back to it through the absolute weights, ``s_k = |W_{k+1}|^T s_{k+1}``, which bounds
how much removing it can change the final responses. Each layer loses a preset fraction of its least
important neurons and the network is fine-tuned. Here :func:`prunekit.criteria.nisp.nisp_scores`
propagates through the engine's graph, the engine cuts the same fraction per layer to meet the
MAC/parameter target, and the shared fine-tune follows.
"""
from __future__ import annotations

from ._registry import MethodResult, RunContext, get_method, register_method
from .l1_filter import _choice, check_context, prune_with_criterion

DEFAULTS = {
    "allocation": "uniform",  # a predefined ratio per layer
    "alpha": 0.5,  # Inf-FS mix of response spread and decorrelation
    "classifier": None,  # FQN of the layer reading the final responses (default: the last nn.Linear)
}


@register_method("nisp", kind="structured", defaults=DEFAULTS, needs_data=True)
def run(ctx: RunContext) -> MethodResult:
    from ..criteria.nisp import nisp_context

    opts = get_method("nisp").options(ctx.options)
    _choice("nisp", "allocation", opts["allocation"], ("uniform", "global"))
    check_context(ctx, "nisp", needs_calib=True)
    with nisp_context(ctx.model, ctx.example_inputs, ctx.calib, ignore=ctx.ignore, alpha=opts["alpha"],
                      classifier=opts["classifier"]):
        rep = prune_with_criterion(ctx, "nisp", "nisp", allocation=opts["allocation"], reduce="group",
                                   calib_needed=False)
    return MethodResult(model=ctx.model, info={"criterion": "nisp", **opts, "engine_report": rep})
