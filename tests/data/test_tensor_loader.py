import pytest
import torch

import prunekit as pk
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


class _AddDrawn:
    """Adds a per-sample random integer: lets a test see which draw each sample got."""

    def __init__(self):
        self.draws = 0

    def draw(self, n, gen):
        self.draws += 1
        return {"k": torch.randint(0, 1000, (n,), generator=gen)}

    def apply(self, x, params):
        return x + 1000 * params["k"].view(-1, 1, 1, 1)


def test_inputs_follow_targets_through_shuffle_transform_and_normalize():
    x, y = _xy(20)
    t = _AddDrawn()
    loader = TensorLoader(x, y, batch_size=6, shuffle=True, transform=t, normalize=lambda b: b + 1)
    out = {}
    for xb, yb in loader:
        for xi, yi in zip(xb.flatten().tolist(), yb.tolist()):
            out[yi] = xi
    assert t.draws == 1 and sorted(out) == list(range(20))
    ks = {i: (v - 1 - i) / 1000 for i, v in out.items()}
    assert all(k == int(k) and 0 <= k < 1000 for k in ks.values())  # x = sample + 1000*k(sample) + 1
    assert len(set(ks.values())) > 10


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


def test_distributed_reads_rank_and_world_from_the_process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        b = pk.data.load("synthetic", n_train=40, batch_size=8, val_fraction=0.0, distributed=True)
        assert b.train.sampler.num_replicas == 1 and b.train.sampler.rank == 0
        plain = pk.data.load("synthetic", n_train=40, batch_size=8, val_fraction=0.0)
        assert [y.tolist() for _, y in b.train] == [y.tolist() for _, y in plain.train]
    finally:
        dist.destroy_process_group()
