import pytest
import torch
import torch.nn as nn

from prunekit.errors import ConfigError
from prunekit.measure import latency


class _Probe(nn.Module):
    def __init__(self, fail_after=None):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)
        self.calls, self.fail_after, self.seen = 0, fail_after, []

    def forward(self, x):
        self.calls += 1
        self.seen.append((self.training, self.drop.training, torch.is_grad_enabled(), torch.get_num_threads()))
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("boom")
        return self.drop(self.fc(x))


def test_runs_warmup_eval_no_grad_and_threads_then_restores():
    m = _Probe()
    m.train()
    m.drop.eval()  # a mixed state must come back exactly
    before = torch.get_num_threads()
    s = latency(m, torch.zeros(2, 4), warmup=3, runs=7, threads=1)
    assert m.calls == 10 and s.runs == 7 and s.threads == 1
    assert set(m.seen) == {(False, False, False, 1)}
    assert m.training and not m.drop.training and m.fc.training
    assert torch.get_num_threads() == before
    assert 0 < s.p10 <= s.median_ms <= s.p90


def test_restores_on_error():
    m = _Probe(fail_after=2)
    m.train()
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        latency(m, torch.zeros(1, 4), warmup=1, runs=5)
    assert m.training and m.drop.training and torch.get_num_threads() == before


def test_percentiles_from_known_times(monkeypatch):
    import prunekit.measure.timing as L

    ticks = iter([0.0, 0.001, 0.0, 0.002, 0.0, 0.003, 0.0, 0.004, 0.0, 0.010])  # 1, 2, 3, 4, 10 ms
    monkeypatch.setattr(L.time, "perf_counter", lambda: next(ticks))
    s = latency(nn.Identity(), torch.zeros(1), warmup=0, runs=5)
    assert s.median_ms == pytest.approx(3.0)
    assert s.p10 == pytest.approx(1.4) and s.p90 == pytest.approx(7.6)  # linear interpolation


def test_dict_and_tuple_inputs():
    class Two(nn.Module):
        def forward(self, a, b):
            return a + b

    assert latency(Two(), (torch.zeros(1), torch.ones(1)), warmup=0, runs=2).runs == 2
    assert latency(Two(), {"a": torch.zeros(1), "b": torch.ones(1)}, warmup=0, runs=2).runs == 2


@pytest.mark.parametrize("kw, match", [({"runs": 0}, "runs=0 must be an int >= 1"),
                                       ({"threads": 1.5}, "threads=1.5 must be an int >= 1"),
                                       ({"warmup": -1}, "warmup=-1 must be an int >= 0")])
def test_bad_arguments(kw, match):
    with pytest.raises(ConfigError, match=match):
        latency(nn.Identity(), torch.zeros(1), **kw)
