"""Standard image augmentation done on whole batches of tensors (no PIL, no per-sample Python loop).

The random choices of an epoch are drawn once for every sample of the data set (``Augment.draw``) and
looked up by sample index (``Augment.apply``), so how a sample is augmented depends on the seed, the epoch
and the sample only — not on the batch size or on how many processes share the data. One process with
batch ``2B`` and two DDP processes with batch ``B`` see identical augmented inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._registry import unknown_name_message
from ..errors import ConfigError

__all__ = ["Augment", "crop_at", "flip_where", "random_crop", "random_flip", "parse_augment", "AUGMENTS"]

AUGMENTS = ("none", "crop", "flip", "crop+flip")


def crop_at(x: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Zero-pad each image by ``padding`` and cut the window whose top-left corner is ``(dy[i], dx[i])``."""
    b, c, h, w = x.shape
    xp = torch.nn.functional.pad(x, (padding, padding, padding, padding))  # [B, C, H+2p, W+2p]
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # [B, H, 1]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # [B, 1, W]
    out = xp.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def flip_where(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images where the bool vector ``flip`` is True."""
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad each image by ``padding`` pixels and cut a random window of the original size.

    Example:
        >>> x = torch.ones(2, 1, 4, 4)
        >>> random_crop(x, 1, torch.Generator().manual_seed(0)).shape
        torch.Size([2, 1, 4, 4])
    """
    if padding <= 0:
        return x
    dy = torch.randint(0, 2 * padding + 1, (x.shape[0],), generator=gen)
    dx = torch.randint(0, 2 * padding + 1, (x.shape[0],), generator=gen)
    return crop_at(x, padding, dy, dx)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    return flip_where(x, torch.rand(x.shape[0], generator=gen) < 0.5)


@dataclass(frozen=True)
class Augment:
    """Random crop after zero padding and/or random horizontal flip, drawn per sample and epoch.

    Example:
        >>> aug = Augment(crop_padding=2, flip=True)
        >>> params = aug.draw(10, torch.Generator().manual_seed(0))  # one draw per sample of the data set
        >>> aug.apply(torch.zeros(3, 1, 8, 8), {k: v[:3] for k, v in params.items()}).shape
        torch.Size([3, 1, 8, 8])
    """

    crop_padding: int = 0  # pixels of zero padding before the random crop; 0 = no crop
    flip: bool = False  # random horizontal flip

    def draw(self, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """The random choices for ``n`` samples: ``dy``, ``dx`` (crop corners) and ``flip`` (bool), each ``[n]``."""
        out = {}
        if self.crop_padding:
            out["dy"] = torch.randint(0, 2 * self.crop_padding + 1, (n,), generator=gen)
            out["dx"] = torch.randint(0, 2 * self.crop_padding + 1, (n,), generator=gen)
        if self.flip:
            out["flip"] = torch.rand(n, generator=gen) < 0.5
        return out

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Augment the batch ``x`` with the choices ``params`` drawn for its samples."""
        if self.crop_padding:
            x = crop_at(x, self.crop_padding, params["dy"], params["dx"])
        if self.flip:
            x = flip_where(x, params["flip"])
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
