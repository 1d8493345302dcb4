"""Task-subset sampler: enumeration, explicit lists, determinism and resume."""

import itertools
import json

import pytest

from metasparsity.meta import TaskSubsetSampler
from metasparsity.utils.errors import UserError

TASKS = ("segment", "depth", "edge", "has_sphere")


def test_all_non_empty_subsets():
    s = TaskSubsetSampler(TASKS)
    assert len(s) == 2 ** len(TASKS) - 1
    assert len(set(s.subsets)) == len(s)
    expected = {c for k in range(1, 5) for c in itertools.combinations(TASKS, k)}
    assert set(s.subsets) == expected


def test_min_size():
    s = TaskSubsetSampler(TASKS, min_size=3)
    assert sorted(map(len, s.subsets)) == [3, 3, 3, 3, 4]
    with pytest.raises(UserError, match="min_subset_size"):
        TaskSubsetSampler(TASKS, min_size=5)


def test_explicit_list_is_normalised():
    s = TaskSubsetSampler(TASKS, subsets=[["depth", "segment"], ["edge"], ["segment", "depth"]])
    assert s.subsets == [("segment", "depth"), ("edge",)]
    with pytest.raises(UserError, match="unknown"):
        TaskSubsetSampler(TASKS, subsets=[["normal"]])
    with pytest.raises(UserError, match="empty"):
        TaskSubsetSampler(TASKS, subsets=[[]])


def test_sampling_is_uniform_without_replacement_and_deterministic():
    a, b = TaskSubsetSampler(TASKS, seed=7), TaskSubsetSampler(TASKS, seed=7)
    draws_a = [a.sample(4) for _ in range(20)]
    assert draws_a == [b.sample(4) for _ in range(20)]
    assert all(len(set(d)) == 4 for d in draws_a)  # no repeats within a meta-batch
    other = TaskSubsetSampler(TASKS, seed=8)
    assert [other.sample(4) for _ in range(20)] != draws_a
    big = a.sample(40)  # more than 15 subsets: balanced repeats
    counts = {x: big.count(x) for x in a.subsets}
    assert set(counts.values()) <= {2, 3} and sum(counts.values()) == 40
    # roughly uniform over many draws
    freq = {x: 0 for x in a.subsets}
    for _ in range(3000):
        for x in a.sample(1):
            freq[x] += 1
    assert min(freq.values()) > 150 and max(freq.values()) < 260


def test_state_round_trip():
    a = TaskSubsetSampler(TASKS, seed=3)
    a.sample(5)
    state = json.loads(json.dumps(a.state_dict()))  # survives a JSON checkpoint
    expected = [a.sample(3) for _ in range(5)]
    b = TaskSubsetSampler(TASKS, seed=99)
    b.load_state_dict(state)
    assert [b.sample(3) for _ in range(5)] == expected
    with pytest.raises(UserError, match="differ"):
        TaskSubsetSampler(TASKS[:2]).load_state_dict(state)
