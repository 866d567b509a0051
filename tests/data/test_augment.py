import pytest
import torch

from prunekit.data import TensorLoader
from prunekit.data.augment import Augment, parse_augment, random_crop, random_flip
from prunekit.errors import ConfigError


def _slow_crop(x, padding, dy, dx):
    xp = torch.nn.functional.pad(x, (padding,) * 4)
    h, w = x.shape[-2:]
    return torch.stack([xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(len(x))])


def test_batched_crop_matches_per_image_slicing():
    x = torch.randint(0, 255, (16, 3, 8, 6), dtype=torch.uint8)
    out = random_crop(x, 2, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    dy = torch.randint(0, 5, (16,), generator=g)
    dx = torch.randint(0, 5, (16,), generator=g)
    assert out.dtype == torch.uint8
    torch.testing.assert_close(out, _slow_crop(x, 2, dy, dx))


def test_crop_pads_with_zeros_and_keeps_pixels():
    x = torch.ones(64, 1, 4, 4)
    out = random_crop(x, 1, torch.Generator().manual_seed(0))
    # every window keeps at least a 3x3 block of the image, and anything else is zero padding
    assert set(out.unique().tolist()) == {0.0, 1.0}
    assert (out.sum(dim=(1, 2, 3)) >= 9).all()
    assert (out.sum(dim=(1, 2, 3)) < 16).any()


def test_flip_mirrors_about_half():
    x = torch.arange(4.0).view(1, 1, 1, 4).repeat(1000, 1, 1, 1)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] == 3).sum().item()
    assert ((out[:, 0, 0, 0] == 0) | (out[:, 0, 0, 0] == 3)).all()
    assert 430 < flipped < 570
    torch.testing.assert_close(out[out[:, 0, 0, 0] == 3][0].flatten(), torch.tensor([3.0, 2.0, 1.0, 0.0]))


def test_parse_augment():
    assert parse_augment(None, "crop+flip", 4) == Augment(4, True)
    assert parse_augment(False, "crop+flip", 4) is None
    assert parse_augment(True, "none", 2) == Augment(2, False)
    assert parse_augment("flip", "crop", 2) == Augment(0, True)
    with pytest.raises(ConfigError, match=r"augment='crp'.*did you mean 'crop'"):
        parse_augment("crp", "crop", 2)


def test_augmentation_is_independent_of_batching_and_sharding():
    x = torch.randint(0, 255, (24, 1, 6, 6), dtype=torch.uint8)
    y = torch.arange(24)
    aug = Augment(crop_padding=2, flip=True)

    def by_label(loaders):
        out = {}
        for loader in loaders:
            loader.set_epoch(1)
            for xb, yb in loader:
                out.update({int(t): xi for t, xi in zip(yb, xb)})
        return out

    one = by_label([TensorLoader(x, y, batch_size=8, shuffle=True, seed=2, transform=aug)])
    two = by_label([TensorLoader(x, y, batch_size=4, shuffle=True, seed=2, transform=aug, distributed=True,
                                 num_replicas=2, rank=r) for r in range(2)])
    small = by_label([TensorLoader(x, y, batch_size=5, shuffle=True, seed=2, transform=aug)])
    assert sorted(one) == sorted(two) == list(range(24))
    for k in range(24):
        assert torch.equal(one[k], two[k]) and torch.equal(one[k], small[k])
    assert sum(not torch.equal(one[k], x[k]) for k in range(24)) > 12  # augmentation did change images
