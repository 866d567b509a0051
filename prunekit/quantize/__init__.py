"""Quantization blocks: weight sharing by k-means (Deep Compression; also C-SGD's filter clustering).

Example:
    >>> import torch
    >>> from prunekit.quantize import kmeans
    >>> kmeans(torch.tensor([0.0, 0.1, 0.9, 1.0]), 2, init="linear")[1].tolist()
    [0, 0, 1, 1]
"""
from __future__ import annotations

from .kmeans import kmeans

__all__ = ["kmeans"]
