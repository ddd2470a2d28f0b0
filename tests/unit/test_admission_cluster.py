"""Admission on a Ray cluster: a job's GPUs come from one node, or split evenly over nodes; no daemon, no files."""

from __future__ import annotations

from dataclasses import replace

from scheduler.gpus.fake import FakeProbe
from scheduler.gpus.types import GpuInfo
from server.services.admission import Assessment, admission_errors, largest_offer, servable_gpus
from worker.spec.job import JobSpec
from worker.spec.units import GIB


def cluster(*nodes: str) -> list[GpuInfo]:
    """Each node's fake GPUs, node-qualified as the cluster probe gives them."""
    gpus = []
    for i, sizes in enumerate(nodes):
        node = f"node{i:02d}" + "0" * 50
        gpus += [replace(g, node=node, uuid=f"{node}/{g.uuid}") for g in FakeProbe(sizes).snapshot()]
    return gpus


def spec(**fields: object) -> JobSpec:
    return JobSpec(model_name_or_path="m", dataset="d", **fields)


def errors(job: JobSpec, gpus: list[GpuInfo]) -> list[dict[str, str]]:
    offer = largest_offer(job, gpus)
    return admission_errors(job, Assessment(largest_offer=offer, fits_ever=offer is not None), gpus, 1)


def test_one_node_offers_its_own_gpus_and_the_same_index_on_two_nodes_is_two_gpus():
    gpus = cluster("2x24GiB", "1x80GiB,1x40GiB")
    assert largest_offer(spec(gpus=1), gpus) == 80 * GIB
    assert largest_offer(spec(gpus=2), gpus) == 40 * GIB  # node 1's pair beats node 0's 24 GiB pair
    assert largest_offer(spec(gpus=2, gpu_ids=[0, 1]), gpus) == 40 * GIB


def test_a_job_larger_than_every_node_is_offered_an_even_split():
    gpus = cluster("2x24GiB", "2x40GiB", "2x80GiB")
    assert largest_offer(spec(gpus=4), gpus) == 40 * GIB  # the two best nodes, two GPUs each
    assert largest_offer(spec(gpus=6), gpus) == 24 * GIB
    assert errors(spec(gpus=4), gpus) == []


def test_a_count_no_split_serves_is_refused_naming_gpus_and_the_count_that_fits():
    gpus = cluster("2x24GiB", "2x24GiB")
    assert largest_offer(spec(gpus=3), gpus) is None  # three nodes of one would do: there are two
    assert servable_gpus(3, gpus) == 2
    [error] = errors(spec(gpus=3), gpus)
    assert error["field"] == "gpus"
    assert "no node of the cluster has that many" in error["message"]
    assert error["message"].endswith("ask for 2")
