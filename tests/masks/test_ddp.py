import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def _worker(rank, world, init_file, out_dir):
    from prunekit.train.distributed import shutdown

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        _train(rank, out_dir)  # its DDP wrapper is garbage once it returns
    finally:
        shutdown()


def _train(rank, out_dir):
    import prunekit as pk
    from prunekit.masks import get_masks

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    pk.sparsify_(model, sparsity=0.75)
    masks = {k: v.clone() for k, v in get_masks(model).items()}
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    g = torch.Generator().manual_seed(rank)
    for _ in range(4):
        x = torch.randn(8, 8, generator=g)
        opt.zero_grad()
        ddp(x).pow(2).mean().backward()
        opt.step()
    torch.save({"state": model.state_dict(), "masks": masks}, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow
def test_masks_hold_under_ddp_and_ranks_agree(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    for k, m in r0["masks"].items():
        assert int((r0["state"][k][~m] != 0).sum()) == 0
    for k in r0["state"]:
        torch.testing.assert_close(r0["state"][k], r1["state"][k])
    # training did move the kept weights
    torch.manual_seed(0)
    fresh = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)).state_dict()
    assert not torch.allclose(fresh["0.weight"] * r0["masks"]["0.weight"], r0["state"]["0.weight"])
