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
masks are installed (hard), and the returned callback re-encrypts at the end of a fine-tune, so the model stays
exactly the decoding of its codes.
The paper's retraining of the pruned, quantised model before encryption is not run by this method (status
partial): fine-tune with any pruning method first, then encrypt.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..masks import get_pattern, install_masks_, prunable_weights, select_masks
from ..quantize import XorCode, xor_decode_tensor, xor_encode_tensor, xor_matrix
from ..train.callbacks import Callback
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

__all__ = ["XorConfig", "Reencrypt", "encrypt_", "run"]


@dataclass(frozen=True)
class XorConfig(MethodConfig):
    n_out: int = option(20, ge=2, le=64)  # decoder outputs per slice (entry's check: N_out = 20)
    n_in: int = option(0, ge=0, le=16)  # code bits per slice; 0 = ceil(n_out * kept fraction) (paper: N_in/N_out ~ 1 - S)
    bits: int = option(1, ge=1, le=4)  # binary-code bit-planes per weight (paper: 1-bit for the AlexNet FC result)
    search: Literal["exhaustive", "solve"] = "exhaustive"  # paper: look-up table of all input/output pairs; solve = GF(2) elimination
    seed: int = option(0, ge=0)  # seed of the fixed random XOR matrix (paper: a random binary matrix)


class Reencrypt(Callback):
    """Re-encrypt at the end of a fine-tune (same masks and matrix), so the model stays exactly decodable."""

    def __init__(self, masks: dict, cfg: XorConfig, n_in: int):
        self.masks, self.cfg, self.n_in, self.codes = masks, cfg, n_in, {}

    def on_train_end(self, state) -> None:
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
                 left_out="the paper's retraining of the pruned, binary-quantised model before encryption (fine-tune "
                          "with a pruning method first); the hardware XOR decoder (decoding here is in software)",
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
    codes, _ = encrypt_(ctx.model, masks, cfg, n_in)
    install_masks_(ctx.model, masks, mode="hard")
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
    return MethodResult(ctx.model, callbacks=[Reencrypt(masks, cfg, n_in)], info=info, telemetry=telemetry)
