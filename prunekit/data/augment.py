"""Standard image augmentation done on whole batches of tensors (no PIL, no per-sample Python loop)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._registry import unknown_name_message
from ..errors import ConfigError

__all__ = ["Augment", "random_crop", "random_flip", "parse_augment"]

AUGMENTS = ("none", "crop", "flip", "crop+flip")


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad each image by ``padding`` pixels and cut a random window of the original size.

    Example:
        >>> x = torch.ones(2, 1, 4, 4)
        >>> random_crop(x, 1, torch.Generator().manual_seed(0)).shape
        torch.Size([2, 1, 4, 4])
    """
    if padding <= 0:
        return x
    b, c, h, w = x.shape
    xp = torch.nn.functional.pad(x, (padding, padding, padding, padding))  # [B, C, H+2p, W+2p]
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # [B, H, 1]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # [B, 1, W]
    out = xp.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=gen) < 0.5).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


@dataclass(frozen=True)
class Augment:
    crop_padding: int = 0  # pixels of zero padding before the random crop; 0 = no crop
    flip: bool = False  # random horizontal flip

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, gen)
        if self.flip:
            x = random_flip(x, gen)
        return x


def parse_augment(augment, default: str, crop_padding: int) -> Augment | None:
    """``None`` -> the data set's default; ``True``/``False``; or one of ``AUGMENTS``."""
    if augment is None:
        augment = default
    elif augment is True:
        augment = default if default != "none" else "crop"
    elif augment is False:
        augment = "none"
    if not isinstance(augment, str) or augment not in AUGMENTS:
        raise ConfigError(unknown_name_message("augmentation", augment, AUGMENTS, "augment")
                          + "; or pass True/False/None (None = the data set's default)")
    if augment == "none":
        return None
    return Augment(crop_padding=crop_padding if "crop" in augment else 0, flip="flip" in augment)
