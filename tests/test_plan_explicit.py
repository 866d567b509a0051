"""``plan``/``prune_`` take every decision from their arguments: no module state, no globals lookup, no
hidden argument (issue 14, "hidden control flow in prune_")."""
import threading

import pytest
import torch

import prunekit as pk
import prunekit.api as api
from prunekit.criteria.nisp import nisp_context
from prunekit.errors import PruneError
from prunekit.testing import models


def _chain(seed):
    torch.manual_seed(seed)
    m, x = models()["chain"]()
    calib = [(torch.randn(8, *x.shape[1:]), None)]
    return m, x, calib


def _channels(p):
    return [g.channels for g in p.groups]


def _plans_in_threads(jobs):
    """Run each ``job()`` in its own thread, all started together; their results in order."""
    out = [None] * len(jobs)
    errors = []
    start = threading.Barrier(len(jobs))

    def run(i, job):
        try:
            start.wait()
            out[i] = job()
        except Exception as e:  # noqa: BLE001 - re-raised below in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, j)) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def test_a_nisp_context_in_one_thread_is_not_read_by_a_plan_in_another():
    a, xa, calib_a = _chain(0)
    b, xb, calib_b = _chain(1)  # same architecture, other weights: other NISP scores, same group keys
    alone = pk.plan(a, xa, sparsity=0.5, criterion="nisp", calib=calib_a)
    with nisp_context(b, xb, calib_b):  # open in this thread only
        inside_b = pk.plan(b, xb, sparsity=0.5, criterion="nisp")
        (beside,) = _plans_in_threads([lambda: pk.plan(a, xa, sparsity=0.5, criterion="nisp", calib=calib_a)])
    assert _channels(inside_b) != _channels(alone)  # the two models rank differently: the test can tell
    assert _channels(beside) == _channels(alone)


def test_concurrent_nisp_and_l1_plans_equal_the_sequential_ones():
    a, xa, calib_a = _chain(0)
    b, xb, calib_b = _chain(1)
    jobs = [lambda: pk.plan(a, xa, sparsity=0.5, criterion="nisp", calib=calib_a),
            lambda: pk.plan(b, xb, sparsity=0.5, criterion="nisp", calib=calib_b),
            lambda: pk.plan(a, xa, sparsity=0.5, criterion="l1")]
    sequential = [_channels(j()) for j in jobs]
    for _ in range(3):
        assert [_channels(p) for p in _plans_in_threads(jobs)] == sequential


def test_prune_does_not_look_up_plan_by_name(monkeypatch):
    def user_plan(*a, **k):
        raise AssertionError("prune_ called the module attribute `plan`")

    monkeypatch.setattr(api, "plan", user_plan)
    m, x = models()["chain"]()
    before = api.count_params(m)
    r = pk.prune_(m, example_inputs=x, sparsity=0.5)
    assert r.params_after < before == r.params_before


def test_surgery_failures_are_typed_at_the_source_and_others_stay_plain(monkeypatch):
    # prune_ decides its retries by these types (no error-string comparison anywhere)
    import numpy as np

    from prunekit import surgery
    from prunekit.errors import BrokenForward, TraceNotConfirmed
    from prunekit.graph import build_graph

    m, x = models()["chain"]()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    graph = build_graph(m, x)
    removal = {0: np.array([0])}

    def raising(exc):
        def f(*a, **k):
            raise exc
        return f

    cases = ((surgery, "_validate", RuntimeError("forward broke"), BrokenForward),
             (surgery, "_validate", TraceNotConfirmed("ops differ", op="trace check"), TraceNotConfirmed),
             (surgery, "_update_size_attrs", RuntimeError("attr"), PruneError))
    for mod, name, exc, kind in cases:
        with monkeypatch.context() as mp:
            mp.setattr(mod, name, raising(exc))
            with pytest.raises(PruneError) as e:
                surgery.remove_channels_(m, graph, removal, example_inputs=x, validate=True)
        assert type(e.value) is kind, (name, type(e.value))
        assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())  # restored each time

