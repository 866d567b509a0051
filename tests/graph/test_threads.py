"""Two threads working on one model take turns (prunekit.graph.oplog.model_lock), and the global module hooks
a trace installs see only the forwards of the thread that traces."""
import threading

import torch
from torch import nn

from prunekit.graph.oplog import eval_mode, model_lock, this_thread_module_hooks


def test_a_second_pass_over_the_same_model_waits_and_finds_the_flags_the_first_restored():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).train()
    seen, entered = [], threading.Event()

    def second():
        entered.set()
        with eval_mode(model) as before:
            seen.append(all(before.values()))  # the first pass had put every flag back (training) first

    with eval_mode(model):
        t = threading.Thread(target=second)
        t.start()
        entered.wait()
        t.join(timeout=0.3)
        assert t.is_alive() and seen == []  # blocked on the model's lock while the first pass holds it
        other = nn.Linear(2, 2)
        with eval_mode(other):  # another model does not wait
            assert not other.training
    t.join(timeout=10)
    assert seen == [True] and model.training and model[1].training
    assert model_lock(model) is model_lock(model) and model_lock(model) is not model_lock(other)


def test_global_module_hooks_ignore_the_forwards_of_other_threads():
    mine, theirs = nn.Linear(2, 2), nn.Linear(2, 2)
    called = []
    with this_thread_module_hooks(lambda mod, args: called.append(("pre", mod)),
                                  lambda mod, args, out: called.append(("post", mod))):
        t = threading.Thread(target=lambda: theirs(torch.randn(1, 2)))
        t.start()
        t.join()
        mine(torch.randn(1, 2))
    assert called == [("pre", mine), ("post", mine)]
    mine(torch.randn(1, 2))  # removed after the block
    assert len(called) == 2
