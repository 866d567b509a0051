"""XOR-gate weight encryption of pruned, binary-code-quantised weights into a fixed-rate format.

Paper: Se Jung Kwon, Dongsoo Lee, Byeongwook Kim, Parichay Kapoor, Baeseong Park, Gu-Yeon Wei, "Structured
Compression by Weight Encryption for Unstructured Pruning and Quantization", CVPR 2020.
https://arxiv.org/abs/1905.10138

Unstructured sparsity compresses well but decodes irregularly: each row of a sparse matrix needs a different
number of steps. The paper stores a pruned, binary-code-quantised layer in a format every slice of which costs
the same: each bit-plane is cut into slices of n_out bits, and a fixed random XOR-gate network (a binary
n_out x n_in matrix over GF(2)) expands an n_in-bit code into the n_out bits. Because pruned weights do not care
what their bits are, the encoder only has to match the unpruned ("care") bits, which a short code usually can
when the kept fraction is about n_in / n_out; the care bits no code matches are stored as small patches, so
decoding is lossless for every kept weight. The result is a fixed compression rate with parallel decoding.

Here: magnitude pruning per layer to the target sparsity (a model that is already at least that sparse keeps
its zeros), greedy multi-bit binary codes per output row, and the codec of :mod:`prunekit.quantize.xor` with
the paper's look-up-table encoder (all 2^n_in codes tried, fewest patches kept). The model's weights become the
decoded ones, which equal the pruned, quantised weights exactly. The mask is taken as known to the decoder, as
in the paper's decoding figure; its cost is reported separately (``mask_bits_per_weight``, a plain bitmap). The
masks are installed (hard). ``retrain_epochs`` retrains the pruned model through its binary-code-quantised
weights (straight-through, :class:`~prunekit.train.callbacks.WeightSTE`) before encryption, as the paper does;
its budget is not given there, and the default 0 encrypts the weights as given (no data needed). The returned
callback trains the same way during a fine-tune and re-encrypts at its end, so the model stays exactly the
decoding of its codes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..masks import get_pattern, install_masks_, prunable_weights, select_masks
from ..errors import ConfigError
from ..quantize import XorCode, binary_quantize, xor_decode_tensor, xor_encode_tensor, xor_matrix
from ..train import fit
from ..train.config import method_train_config
from ..train.callbacks import WeightSTE
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

__all__ = ["XorConfig", "BinaryCodeTraining", "encrypt_", "run"]


@dataclass(frozen=True)
class XorConfig(MethodConfig):
    n_out: int = option(20, ge=2, le=64)  # decoder outputs per slice (entry's check: N_out = 20)
    n_in: int = option(0, ge=0, le=16)  # code bits per slice; 0 = ceil(n_out * kept fraction) (paper: N_in/N_out ~ 1 - S)
    bits: int = option(1, ge=1, le=4)  # binary-code bit-planes per weight (paper: 1-bit for the AlexNet FC result)
    search: Literal["exhaustive", "solve"] = "exhaustive"  # paper: look-up table of all input/output pairs; solve = GF(2) elimination
    seed: int = option(0, ge=0)  # seed of the fixed random XOR matrix (paper: a random binary matrix)
    retrain_epochs: int = option(0, ge=0)  # paper retrains the pruned, quantised model (budget not given); 0: encrypt as given


class BinaryCodeTraining(WeightSTE):
    """Training through the binary-code-quantised weights (masks fixed, straight-through update); with
    ``encrypt`` the weights are re-encrypted at the end, so the model stays exactly the decoding of its codes."""

    def __init__(self, model, masks: dict, cfg: XorConfig, n_in: int, encrypt: bool = True):
        super().__init__(model, masks)
        self.masks, self.cfg, self.n_in, self.encrypt, self.codes = masks, cfg, n_in, encrypt, {}

    def quantized(self, fqn: str, full: torch.Tensor) -> torch.Tensor:
        return binary_quantize(full, self.masks[fqn], self.cfg.bits)

    def on_train_end(self, state) -> None:
        super().on_train_end(state)
        if self.encrypt:
            self.codes, _ = encrypt_(state.model, self.masks, self.cfg, self.n_in)


def encrypt_(model, masks: dict[str, torch.Tensor], cfg: XorConfig, n_in: int) -> tuple[dict[str, XorCode], object]:
    """Encode every layer of ``masks`` and write the decoded weights into ``model``; ``(codes, matrix)``."""
    m = xor_matrix(cfg.n_out, n_in, seed=cfg.seed)
    codes = {}
    with torch.no_grad():
        for fqn, mask in masks.items():
            p = model.get_parameter(fqn)
            code, _ = xor_encode_tensor(p.detach().cpu(), mask.cpu(), m, bits=cfg.bits, search=cfg.search)
            codes[fqn] = code
            p.copy_(xor_decode_tensor(code, m).to(p))
    return codes, m


@register_method("xor-encryption", config=XorConfig, kind="unstructured", status="partial",
                 left_out="the hardware XOR decoder (decoding here is in software); the paper's retraining budget is "
                          "not known, so retraining is off by default (options.retrain_epochs)",
                 telemetry=Telemetry(keys=("slices", "patches", "bits_per_weight", "quant_bits"),
                                     engaged=lambda t: t["slices"] >= 1 and t["bits_per_weight"] < t["quant_bits"],
                                     what="compression by XOR-gate encryption (fewer stored bits per weight than the "
                                          "binary codes themselves)",
                                     knob="raise the target sparsity or lower options.n_in: patches cost more than "
                                          "the codes save"))
def run(ctx: RunContext, cfg: XorConfig) -> MethodResult:
    """Magnitude-prune to the target, binary-code quantise, encrypt through the XOR network, decode."""
    params = prunable_weights(ctx.model, ctx.ignore)
    sparsity = ctx.target_value
    scores = {f: p.detach().abs() for f, p in params.items()}
    masks = select_masks(scores, get_pattern("element"), {f: sparsity for f in params})
    n_in = cfg.n_in or max(1, min(cfg.n_out - 1, math.ceil(cfg.n_out * (1 - sparsity))))
    install_masks_(ctx.model, masks, mode="hard")
    if cfg.retrain_epochs:
        if ctx.train_data is None:
            raise ConfigError(f"retrain_epochs={cfg.retrain_epochs}: retraining needs training batches "
                              f"(RunContext(train_data=...)); pass them or set retrain_epochs=0")
        fit(ctx.model, ctx.train_data, method_train_config(ctx, cfg.retrain_epochs),
            callbacks=[BinaryCodeTraining(ctx.model, masks, cfg, n_in, encrypt=False)])
    codes, _ = encrypt_(ctx.model, masks, cfg, n_in)
    total = sum(p.numel() for p in params.values())
    code_bits = sum(c.code_bits() for c in codes.values())
    scale_bits = sum(32 * c.alphas.numel() for c in codes.values())
    telemetry = {"slices": sum(len(pl.codes) for c in codes.values() for pl in c.planes),
                 "patches": sum(c.patches() for c in codes.values()),
                 "bits_per_weight": code_bits / total, "quant_bits": cfg.bits}
    info = {**telemetry, "n_in": n_in, "n_out": cfg.n_out, "sparsity": 1 - sum(int(m.sum()) for m in masks.values()) / total,
            "scale_bits_per_weight": scale_bits / total, "mask_bits_per_weight": 1.0,
            "ratio_vs_float32": 32 * total / (code_bits + scale_bits),
            "layers": {f: {"bits_per_weight": c.code_bits() / c.mask.numel(), "patches": c.patches()}
                       for f, c in codes.items()}}
    return MethodResult(ctx.model, callbacks=[BinaryCodeTraining(ctx.model, masks, cfg, n_in)], info=info, telemetry=telemetry)
