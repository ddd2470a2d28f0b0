"""Placement over the GPUs of several nodes: one node per job, gangs for jobs larger than any node."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import hypothesis
from hypothesis import strategies as st

from scheduler.gpus.fake import FakeProbe
from scheduler.gpus.types import GpuInfo
from scheduler.policy.gpu_pool import gang_shape
from scheduler.policy.placement import NodeShare, Placement, QueuedJob, place, plan
from scheduler.policy.wait_reasons import explain_wait

GIB = 1 << 30


def node(name: str, spec: str = "2x24GiB") -> tuple[list[GpuInfo], dict[tuple[str, str], int]]:
    """One node's GPUs as the cluster probe names them: node-qualified uuids, the node's own indices."""
    probe = FakeProbe(spec)
    gpus = [replace(g, uuid=f"{name}/{g.uuid}", node=name) for g in probe.snapshot()]
    return gpus, {(f"{name}/{a}", f"{name}/{b}"): d for (a, b), d in probe.topology().items()}


def cluster(*specs: str) -> list[GpuInfo]:
    """Nodes n0, n1, … with the given FakeProbe specs."""
    return [g for i, spec in enumerate(specs) for g in node(f"n{i}", spec)[0]]


def job(job_id: int, n: int = 1, priority: int = 0, need: int = 0, pinned: tuple[int, ...] | None = None):
    return QueuedJob(job_id, priority, job_id, n, need, pinned)


def uuid(gpus: list[GpuInfo], name: str, index: int) -> str:
    return next(g.uuid for g in gpus if g.node == name and g.index == index)


def test_a_job_never_mixes_gpus_of_two_nodes():
    g = cluster("2x24GiB", "2x24GiB")
    leased = {uuid(g, "n0", 0), uuid(g, "n1", 0)}  # one free GPU on each node: two, but not on one node
    result = plan([job(1, n=2), job(2)], g, leased, 0)
    assert result.reserved_for == 1 and result.reserved == {uuid(g, "n0", 0), uuid(g, "n0", 1)}  # on one node
    assert [(p.job_id, p.node, p.cuda_visible_devices) for p in result.placements] == [(2, "n1", "1")]


def test_each_node_numbers_its_own_gpus():
    g = cluster("1x24GiB", "1x24GiB")
    placed = place([job(1), job(2)], g, set(), 0)
    assert [(p.node, p.cuda_visible_devices, p.shares) for p in placed] == [("n0", "0", ()), ("n1", "0", ())]
    assert placed[0] == Placement(1, (uuid(g, "n0", 0),), "0", node="n0")


def test_a_lease_on_one_node_leaves_the_same_index_on_another_free():
    g = cluster("2x24GiB", "2x24GiB")
    placed = place([job(1, pinned=(0,)), job(2)], g, {uuid(g, "n0", 0)}, 0)
    assert [(p.job_id, p.node, p.cuda_visible_devices) for p in placed] == [(1, "n1", "0"), (2, "n0", "1")]


def test_a_job_goes_to_the_node_it_fills_best_so_a_bigger_one_still_fits():
    g = cluster("4x24GiB", "4x24GiB")
    leased = {uuid(g, "n1", i) for i in range(3)}  # n0: 4 free, n1: 1 free
    placed = place([job(1), job(2, n=4)], g, leased, 0)
    assert [(p.job_id, p.node, p.cuda_visible_devices) for p in placed] == [(1, "n1", "3"), (2, "n0", "0,1,2,3")]


def test_memory_counts_per_node_when_choosing_the_best_fit():
    small, _ = node("a", "2x24GiB")
    big, _ = node("b", "1x80GiB")
    placed = place([job(1, need=40 * GIB)], small + big, set(), 0, margin_bytes=GIB)
    assert [(p.node, p.cuda_visible_devices) for p in placed] == [("b", "0")]  # a has two, but neither fits


def test_topology_applies_within_a_node():
    a, links_a = node("a", "4x80GiB@nvlink2/system")
    b, links_b = node("b", "4x80GiB@nvlink2/system")
    leased = {uuid(a, "a", 0), uuid(b, "b", 0), uuid(b, "b", 1)}  # b: only the NVLink pair 2,3 is free
    placed = place([job(1, n=2), job(2, n=2)], a + b, leased, 0, topology={**links_a, **links_b})
    assert [(p.node, p.cuda_visible_devices) for p in placed] == [("b", "2,3"), ("a", "2,3")]


def test_a_job_larger_than_every_node_runs_as_a_gang_of_equal_shares():
    g = cluster("2x24GiB", "2x24GiB", "2x24GiB")
    (placed,) = place([job(1, n=4)], g, {uuid(g, "n0", 0)}, 0)  # n0 has one free GPU: n1 and n2 serve
    assert placed.shares == (
        NodeShare("n1", (uuid(g, "n1", 0), uuid(g, "n1", 1)), "0,1"),
        NodeShare("n2", (uuid(g, "n2", 0), uuid(g, "n2", 1)), "0,1"),
    )
    assert placed.node == "n1" and placed.cuda_visible_devices == "n1:0,1;n2:0,1"
    assert placed.resources == placed.shares[0].resources + placed.shares[1].resources


def test_a_gang_starts_whole_or_not_and_its_reservation_keeps_backfill_off_its_gpus():
    g = cluster("2x24GiB", "2x24GiB", "2x24GiB")
    leased = {uuid(g, "n0", 0), uuid(g, "n1", 0)}  # only n2 has two free GPUs: the gang needs two such nodes
    result = plan([job(1, n=4), job(2), job(3), job(4)], g, leased, 0)
    assert result.reserved_for == 1
    # It waits for the GPUs our jobs hold on n0 and n1 rather than hold n2's idle ones.
    assert result.reserved == {uuid(g, n, i) for n in ("n0", "n1") for i in (0, 1)}
    assert [(p.job_id, p.node) for p in result.placements] == [(2, "n2"), (3, "n2")]  # job 4 waits


def test_a_gang_splits_into_the_fewest_nodes_that_divide_it():
    g = cluster("2x24GiB", "2x24GiB", "2x24GiB")
    (placed,) = place([job(1, n=3)], g, set(), 0)  # 3 over nodes of 2: 3 nodes of 1
    assert [(s.node, s.cuda_visible_devices) for s in placed.shares] == [("n0", "0"), ("n1", "0"), ("n2", "0")]
    assert gang_shape(12, [8, 8]) == (2, 6) and gang_shape(12, [8, 8, 8]) == (2, 6)
    assert gang_shape(5, [4, 4]) is None  # 5 nodes of 1 would do, and there are two
    assert gang_shape(12, [8, 2, 2]) is None  # 2 of 6 or 3 of 4 need nodes that big


def test_a_gang_that_can_never_split_waits_and_says_why():
    g = cluster("4x24GiB", "4x24GiB")
    result = plan([job(1, n=5), job(2)], g, set(), 0)
    assert result.reserved_for is None and [p.job_id for p in result.placements] == [2]
    assert explain_wait(job(1, n=5), g, {}) == (
        "waiting: needs 5 GPUs on nodes of at most 4 GPUs: 5 cannot be split evenly over the 2 nodes there are"
        " (the fewest even split is 5 nodes of 1)"
    )
    uneven = cluster("8x24GiB", "2x24GiB", "2x24GiB")
    assert explain_wait(job(2, n=12), uneven, {}).endswith(
        "over the 3 nodes there are (the fewest even split is 2 nodes of 6, and 1 node has that many)"
    )


def test_a_pinned_job_takes_its_indices_on_the_first_node_where_they_all_qualify():
    g = cluster("2x24GiB", "2x24GiB")
    assert place([job(1, n=2, pinned=(1, 0))], g, set(), 0)[0].node == "n0"
    placed = place([job(1, n=2, pinned=(1, 0))], g, {uuid(g, "n0", 0)}, 0)
    assert [(p.node, p.cuda_visible_devices) for p in placed] == [("n1", "1,0")]
    result = plan([job(1, n=2, pinned=(0, 1)), job(2)], g, {uuid(g, "n0", 0), uuid(g, "n1", 1)}, 0)
    assert result.reserved == {uuid(g, "n0", 0), uuid(g, "n0", 1)}  # waits on n0; job 2 backfills on n1
    assert [(p.job_id, p.node, p.cuda_visible_devices) for p in result.placements] == [(2, "n1", "0")]
    assert place([job(1, pinned=(2,))], g, set(), 0) == []  # no node has a GPU 2


def test_a_waiting_job_on_a_cluster_says_which_node():
    a, _ = node("abc123def456", "2x40GiB")
    b, _ = node("fed987cba654", "2x40GiB")
    holders = {a[0].uuid: 7, b[0].uuid: 8, b[1].uuid: 9}
    assert explain_wait(job(3, n=2), a + b, holders) == (
        "waiting: needs 2 GPUs on one node; node abc123de has 1 (GPU 0 on node abc123de is held by job 7)"
    )
    assert explain_wait(job(4, n=1, pinned=(1,)), a + b, {b[1].uuid: 9, a[1].uuid: 7}) == (
        "waiting: pinned to GPU 1 on one node; GPU 1 on node abc123de is held by job 7"
    )
    assert explain_wait(job(5, n=4, need=10 * GIB), a + b, holders, margin_bytes=GIB) == (
        "waiting: needs 4 GPUs with 11.0 GiB free as 2 nodes of 2; 0 nodes have 2 (GPU 0 on node abc123de is held"
        " by job 7; GPU 0 on node fed987cb is held by job 8; GPU 1 on node fed987cb is held by job 9)"
    )
    assert explain_wait(job(6, n=4), a + b, {}) == (
        "waiting: needs 4 GPUs as 2 nodes of 2; 2 nodes have 2"
        "; a job ahead of it holds a reservation on them, or it starts at the next pass"
    )


# ---- properties over any cluster ----

nodes_st = st.lists(st.tuples(st.integers(1, 4), st.sampled_from(["24GiB", "80GiB"])), min_size=1, max_size=5)
jobs_st = st.lists(
    st.tuples(st.integers(0, 10), st.integers(0, 2), st.sampled_from([0, 10, 30, 70]), st.booleans()), max_size=14
)


@hypothesis.settings(max_examples=300, deadline=None, database=None, derandomize=True)
@hypothesis.given(nodes_st, jobs_st, st.data())
def test_no_gpu_is_given_twice_and_every_placement_has_a_whole_shape(nodes, specs, data):
    g = cluster(*(f"{count}x{size}" for count, size in nodes))
    leased = set(data.draw(st.sets(st.sampled_from([x.uuid for x in g]))))
    queue = [
        job(i, n, prio, need * GIB, tuple(range(n)) if pin and 0 < n <= 4 else None)
        for i, (n, prio, need, pin) in enumerate(specs)
    ]
    result = plan(queue, g, leased, cpu_slots=2)
    by_uuid, by_id = {x.uuid: x for x in g}, {j.job_id: j for j in queue}
    given = [r for p in result.placements for r in p.resources]
    assert len(given) == len(set(given)) and not set(given) & leased and not set(given) & result.reserved
    for p in result.placements:
        wanted = by_id[p.job_id]
        if wanted.gpus == 0:
            continue
        chosen = [by_uuid[r] for r in p.resources]
        assert len(chosen) == wanted.gpus and all((x.memory_free or 0) >= wanted.need_bytes for x in chosen)
        if not p.shares:
            assert {x.node for x in chosen} == {p.node}
            assert p.cuda_visible_devices == ",".join(str(x.index) for x in chosen)
            continue
        assert wanted.gpus > max(Counter(x.node for x in g).values())  # a gang only when no node is enough
        assert len({s.node for s in p.shares}) == len(p.shares) > 1 and p.node == p.shares[0].node
        assert {len(s.resources) for s in p.shares} == {wanted.gpus // len(p.shares)}
        assert all(by_uuid[r].node == s.node for s in p.shares for r in s.resources)
        assert p.resources == tuple(r for s in p.shares for r in s.resources)
        assert p.cuda_visible_devices == ";".join(f"{s.node}:{s.cuda_visible_devices}" for s in p.shares)
    assert plan(list(reversed(queue)), g, leased, cpu_slots=2) == result  # the queue's order is the plan's own
