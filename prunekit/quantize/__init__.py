"""Quantisation blocks: k-means weight sharing, uniform quantisers with a straight-through estimator (fixed or
learned step, learned bit-width), CLIP-Q's clip-and-partition, the bits each layer uses and the packed size of
a saved model, and the XOR-gate weight encryption codec.

Example:
    >>> import torch
    >>> from prunekit.quantize import kmeans
    >>> kmeans(torch.tensor([0.0, 0.1, 0.9, 1.0]), 2, init="linear")[1].tolist()
    [0, 0, 1, 1]
"""
from __future__ import annotations

from .kmeans import Codebook, kmeans, share_weights_
from .store import bits_used, load_packed, packed_size, save_packed
from .uniform import FakeQuant, bits_for, clip_partition, quantize_to_bits, ste_round, uniform_quantize
from .xor import XorCode, binary_codes, binary_quantize, gf2_solve, xor_decode_tensor, xor_encode_tensor, xor_matrix

__all__ = ["kmeans", "Codebook", "share_weights_", "bits_used", "save_packed", "load_packed", "packed_size",
           "FakeQuant", "bits_for", "clip_partition", "quantize_to_bits", "ste_round", "uniform_quantize",
           "XorCode", "binary_codes", "binary_quantize", "gf2_solve", "xor_decode_tensor", "xor_encode_tensor", "xor_matrix"]
