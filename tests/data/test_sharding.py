"""The rank/worker split shared by the streaming datasets, and per-epoch skip counts."""

from __future__ import annotations

from collections import Counter

import pytest

from bridgetower.data import SkipStats
from bridgetower.data.sharding import WorkerShard, check_rank_world, current_shard


@pytest.mark.parametrize("n", [0, 1, 3, 7, 12, 25])
@pytest.mark.parametrize("world,workers", [(1, 1), (2, 3), (3, 2), (4, 4)])
def test_every_unit_read_once_and_ranks_balanced(n, world, workers):
    units = list(range(n))
    parts = {
        (r, w): WorkerShard(r, world, w, workers).take(units) for r in range(world) for w in range(workers)
    }
    seen = Counter(u for part in parts.values() for u in part)
    assert seen == Counter(units)
    per_rank = [sum(len(parts[r, w]) for w in range(workers)) for r in range(world)]
    assert max(per_rank) - min(per_rank) <= 1
    for r in range(world):  # what a rank reads does not depend on its number of workers
        assert sorted(u for w in range(workers) for u in parts[r, w]) == units[r::world]


def test_take_keeps_the_order_and_accepts_tuples():
    assert WorkerShard(1, 2, 0, 2).take(("a", "b", "c", "d", "e", "f")) == ["b", "f"]
    assert WorkerShard().take([3, 1, 2]) == [3, 1, 2]


def test_validation():
    check_rank_world(None, None)
    check_rank_world(1, 2)
    with pytest.raises(ValueError, match="both rank and world_size"):
        check_rank_world(0, None)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        check_rank_world(2, 2)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        check_rank_world(True, 2)
    with pytest.raises(ValueError, match="0 <= worker < num_workers"):
        WorkerShard(0, 1, 3, 3)


def test_current_shard_outside_distributed_and_workers():
    assert current_shard() == WorkerShard(0, 1, 0, 1)
    assert current_shard(2, 4) == WorkerShard(2, 4, 0, 1)
    assert str(current_shard(2, 4)) == "rank 2 worker 0 (4 ranks x 1 workers)"


def test_skip_stats_since_counts_what_came_after():
    stats = SkipStats()
    stats.add("bad_record", "a")
    before = stats.as_dict()
    stats.add("bad_record", "b")
    stats.add("empty_caption", "c")
    epoch = stats.since(before)
    assert epoch.as_dict() == {"missing_file": 0, "unreadable_image": 0, "empty_caption": 1, "bad_record": 1}
    assert stats.total == 3
