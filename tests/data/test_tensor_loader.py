import pytest
import torch

from prunekit.data import TensorLoader
from prunekit.errors import ConfigError


def _xy(n=10):
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.arange(n)


def test_unshuffled_batches_cover_data_in_order():
    x, y = _xy(10)
    loader = TensorLoader(x, y, batch_size=4)
    batches = list(loader)
    assert len(loader) == 3 == len(batches)
    assert [b[1].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    torch.testing.assert_close(batches[2][0].flatten(), torch.tensor([8.0, 9.0]))


def test_drop_last():
    x, y = _xy(10)
    loader = TensorLoader(x, y, batch_size=4, drop_last=True)
    assert len(loader) == 2
    assert sum(len(b[1]) for b in loader) == 8


def test_shuffle_is_a_seeded_permutation_per_epoch():
    x, y = _xy(50)
    a = TensorLoader(x, y, batch_size=8, shuffle=True, seed=3)
    b = TensorLoader(x, y, batch_size=8, shuffle=True, seed=3)
    e0 = torch.cat([t for _, t in a])
    e1 = torch.cat([t for _, t in a])  # second pass = epoch 1
    assert sorted(e0.tolist()) == list(range(50))
    assert e0.tolist() != e1.tolist()
    assert e0.tolist() == torch.randperm(50, generator=torch.Generator().manual_seed(3)).tolist()
    b.set_epoch(1)
    assert torch.cat([t for _, t in b]).tolist() == e1.tolist()
    b.set_epoch(0)
    assert torch.cat([t for _, t in b]).tolist() == e0.tolist()


def test_inputs_follow_targets_through_shuffle_transform_and_normalize():
    x, y = _xy(20)
    seen = []

    def transform(batch, gen):
        seen.append(gen.initial_seed())
        return batch * 2

    loader = TensorLoader(x, y, batch_size=6, shuffle=True, transform=transform, normalize=lambda b: b + 1)
    for xb, yb in loader:
        torch.testing.assert_close(xb.flatten(), yb.float() * 2 + 1)
    assert len(seen) == 4 and len(set(seen)) == 1  # one generator per epoch


def test_two_distributed_ranks_partition_one_process_global_batches():
    x, y = _xy(32)
    single = TensorLoader(x, y, batch_size=8, shuffle=True, seed=5)
    ranks = [TensorLoader(x, y, batch_size=4, shuffle=True, seed=5, distributed=True, num_replicas=2, rank=r)
             for r in range(2)]
    for loader in ranks:
        loader.set_epoch(2)
    single.set_epoch(2)
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 4
    for (_, ys), (_, y0), (_, y1) in zip(single, *ranks):
        assert sorted(ys.tolist()) == sorted(y0.tolist() + y1.tolist())
        assert not set(y0.tolist()) & set(y1.tolist())


def test_distributed_without_process_group_is_a_config_error():
    x, y = _xy(4)
    with pytest.raises(ConfigError, match="init_process_group"):
        TensorLoader(x, y, distributed=True)


@pytest.mark.parametrize("bs", [0, -1, 2.0, True])
def test_bad_batch_size(bs):
    x, y = _xy(4)
    with pytest.raises(ConfigError, match=r"batch_size=.*positive int"):
        TensorLoader(x, y, batch_size=bs)
