"""Lottery tickets: iterative magnitude pruning with rewinding.

Paper: "The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks", Jonathan Frankle,
Michael Carbin. ICLR 2019. https://arxiv.org/abs/1803.03635

A randomly initialised dense network contains sparse subnetworks that, trained on their own from the same
initial values, match the dense network. They are found by training, removing a fixed fraction of the
smallest surviving weights, resetting the survivors to their initial values, and repeating. The mask plus
the initial values is the "winning ticket"; the same mask with fresh random values trains worse, which is
the control. Rewinding to an early training step instead of step 0 (late resetting) makes tickets appear in
larger networks.
"""
from __future__ import annotations

from ..masks.workflows import find_ticket, method_options, reinit_, target_sparsity, train_config
from ._registry import MethodResult, RunContext, register_method

__all__ = ["run_lth"]


@register_method("lth", kind="unstructured", needs_data=True, defaults={
    "rounds": 5,  # train -> prune -> rewind rounds; each removes the same fraction of the survivors
    "round_epochs": None,  # epochs per round (None: ctx.prune_epochs)
    "rewind_step": 0,  # optimizer step to rewind to (0 = initialisation; > 0 = late resetting)
    "allocation": "uniform",  # "uniform" (per layer, small nets) or "global" (VGG/ResNet)
    "exempt": (),
    "reinit": False,  # control: keep the mask but re-initialise the weights randomly
})
def run_lth(ctx: RunContext) -> MethodResult:
    """Find a ticket on ``ctx.train_data``; the model returned holds the rewound ticket (train it next)."""
    opts = method_options("lth", ctx.options)
    sparsity = target_sparsity(ctx.target, "lth")
    epochs = opts["round_epochs"] if opts["round_epochs"] is not None else max(1, ctx.prune_epochs)
    cfg = train_config(ctx, epochs)
    ticket = find_ticket(ctx.model, ctx.train_data, cfg, sparsity=sparsity, rounds=opts["rounds"],
                         rewind_step=opts["rewind_step"], allocation=opts["allocation"],
                         exempt=tuple(opts["exempt"]), ignore=tuple(ctx.ignore))
    if opts["reinit"]:
        reinit_(ctx.model, seed=ctx.seed + 1)
    return MethodResult(ctx.model, callbacks=[], info={"rounds": ticket.history, "rewind_step": ticket.rewind_step,
                                                       "sparsity": ticket.history[-1]["sparsity"]})
