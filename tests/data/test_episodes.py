"""Episodic N-way K-shot tasks: class splits, relabelling, disjoint support/query, seeds, errors."""
import pytest
import torch

from prunekit.data.episodes import EpisodeSampler, gather, split_classes
from prunekit.errors import ConfigError


def _data(n_classes=10, per_class=8):
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    images = labels.float().view(-1, 1, 1, 1) * 1000 + torch.arange(len(labels)).float().view(-1, 1, 1, 1)
    return images, labels  # image value = 1000 * class + its index: class and identity readable from it


def test_split_holds_out_the_asked_number_of_classes_disjointly_and_is_seeded():
    _, labels = _data()
    a, b, c = split_classes(labels, 4, seed=0), split_classes(labels, 4, seed=0), split_classes(labels, 4, seed=1)
    assert a == b and len(a.test) == 4 and len(a.train) == 6
    assert set(a.train) | set(a.test) == set(range(10)) and not set(a.train) & set(a.test)
    assert a != c
    assert split_classes(labels, [6, 7, 8, 9]).train == (0, 1, 2, 3, 4, 5)


def test_episode_relabels_classes_and_keeps_support_and_query_disjoint():
    images, labels = _data()
    sampler = EpisodeSampler(images, labels, range(6), ways=5, seed=3)
    ep = sampler.episode(shots=2, queries=3)
    assert ep.support_y.tolist() == [i for i in range(5) for _ in range(2)]
    assert ep.query_y.tolist() == [i for i in range(5) for _ in range(3)]
    cls_s = (ep.support_x.flatten() // 1000).long()
    cls_q = (ep.query_x.flatten() // 1000).long()
    assert cls_s.tolist() == [ep.classes[y] for y in ep.support_y.tolist()]  # label i <-> ep.classes[i]
    assert cls_q.tolist() == [ep.classes[y] for y in ep.query_y.tolist()]
    assert len(set(ep.classes)) == 5 and set(ep.classes) <= set(range(6))
    assert not set(ep.support_x.flatten().tolist()) & set(ep.query_x.flatten().tolist())


def test_labels_are_permuted_across_episodes_and_the_sampler_is_seeded():
    images, labels = _data()
    a = [EpisodeSampler(images, labels, range(6), ways=5, seed=0).episode(1).classes for _ in range(2)]
    s = EpisodeSampler(images, labels, range(6), ways=5, seed=0)
    b = [s.episode(1).classes for _ in range(20)]
    assert a[0] == a[1] == b[0]
    assert len(set(b)) > 10  # class order (the relabelling) changes from task to task


def test_always_classes_are_in_every_task_and_the_rest_is_drawn():
    images, labels = _data()
    s = EpisodeSampler(images, labels, range(6), ways=5, always=(6, 7, 8, 9), seed=0)
    tasks = [set(s.episode(1).classes) for _ in range(20)]
    assert all({6, 7, 8, 9} < t and len(t - {6, 7, 8, 9}) == 1 for t in tasks)
    assert len({min(t) for t in tasks}) > 1


def test_support_batches_cover_the_support_set_before_repeating():
    images, labels = _data()
    ep = EpisodeSampler(images, labels, range(6), ways=5, seed=0).episode(shots=3)
    batches = ep.batches(5, 6, torch.Generator().manual_seed(0))
    assert [len(y) for _, y in batches] == [5, 5, 5, 5, 5, 5]
    first_pass = torch.cat([x for x, _ in batches[:3]]).flatten()
    assert sorted(first_pass.tolist()) == sorted(ep.support_x.flatten().tolist())


def test_gather_concatenates_batches():
    images, labels = _data()
    x, y = gather([(images[:30], labels[:30]), (images[30:], labels[30:])])
    assert torch.equal(x, images) and torch.equal(y, labels)


def test_bad_requests_are_refused_with_the_argument():
    images, labels = _data(per_class=3)
    with pytest.raises(ConfigError, match="held_out=10"):
        split_classes(labels, 10)
    with pytest.raises(ConfigError, match="ways=7"):
        EpisodeSampler(images, labels, range(6), ways=7)
    with pytest.raises(ConfigError, match="shots \\+ queries = 4"):
        EpisodeSampler(images, labels, range(6), ways=5).episode(shots=2, queries=2)
