"""Placement as a pure function: filters, the refusal's reason, and the weighers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nebula_core.contract.types import Resources
from nebula_core.domain.node import shortfall
from nebula_core.orchestrator.placement import Candidate, NoValidHost, rank


def node(
    node_id: str,
    *,
    region: str = "r1",
    live: bool = True,
    vcpus: int = 8,
    ram_mb: int = 8192,
    disk_gb: int = 100,
    used_vcpus: int = 0,
    used_ram: int = 0,
    used_disk: int = 0,
) -> Candidate:
    usable = Resources(vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb)
    free = Resources(vcpus=vcpus - used_vcpus, ram_mb=ram_mb - used_ram, disk_gb=disk_gb - used_disk)
    return Candidate(node_id=node_id, region=region, live=live, usable=usable, free=free)


SMALL = Resources(vcpus=1, ram_mb=256, disk_gb=1)


def test_only_nodes_of_the_region_are_candidates() -> None:
    ranked = rank([node("a", region="r1"), node("b", region="r2")], want=SMALL, region="r2")
    assert [c.node_id for c in ranked] == ["b"]


def test_a_region_without_nodes_is_named_with_the_regions_that_exist() -> None:
    with pytest.raises(NoValidHost, match=r"no node in region mars \(regions with nodes: r1, r2\)"):
        rank([node("a", region="r1"), node("b", region="r2")], want=SMALL, region="mars")


def test_an_empty_fleet_says_no_node_is_registered() -> None:
    with pytest.raises(NoValidHost, match="no node is registered"):
        rank([], want=SMALL, region="r1")


def test_dead_nodes_are_filtered_and_the_reason_says_so() -> None:
    with pytest.raises(NoValidHost, match="no live node in region r1: all 2 are down"):
        rank([node("a", live=False), node("b", live=False)], want=SMALL, region="r1")
    ranked = rank([node("a", live=False), node("b")], want=SMALL, region="r1")
    assert [c.node_id for c in ranked] == ["b"]


def test_capacity_refusal_names_what_is_missing() -> None:
    nodes = [node("a", used_vcpus=6), node("b", used_vcpus=7)]
    with pytest.raises(NoValidHost, match=r"no node in region r1 with 4 free vCPUs$"):
        rank(nodes, want=Resources(vcpus=4, ram_mb=256, disk_gb=1), region="r1")


def test_capacity_refusal_when_no_single_node_has_everything() -> None:
    nodes = [node("a", used_vcpus=8), node("b", used_ram=8192)]
    with pytest.raises(NoValidHost, match="with 1 free vCPUs and 256 MiB free RAM"):
        rank(nodes, want=SMALL, region="r1")


def test_spread_prefers_the_emptiest_node_and_pack_the_fullest() -> None:
    nodes = [node("full", used_vcpus=6), node("empty"), node("half", used_vcpus=4)]
    assert [c.node_id for c in rank(nodes, want=SMALL, region="r1")] == ["empty", "half", "full"]
    assert [c.node_id for c in rank(nodes, want=SMALL, region="r1", strategy="pack")] == ["full", "half", "empty"]


def test_the_scarcest_dimension_decides_the_weight() -> None:
    cpu_rich_ram_poor = node("a", used_ram=7000)
    balanced = node("b", used_vcpus=2, used_ram=2048)
    assert [c.node_id for c in rank([cpu_rich_ram_poor, balanced], want=SMALL, region="r1")] == ["b", "a"]


resources = st.builds(Resources, vcpus=st.integers(0, 16), ram_mb=st.integers(0, 16384), disk_gb=st.integers(0, 200))


@given(
    frees=st.lists(st.tuples(resources, st.booleans(), st.sampled_from(["r1", "r2"])), max_size=12),
    want=resources,
    strategy=st.sampled_from(["spread", "pack"]),
)
def test_every_ranked_node_fits_and_a_refusal_means_none_did(frees, want, strategy) -> None:  # type: ignore[no-untyped-def]
    usable = Resources(vcpus=16, ram_mb=16384, disk_gb=200)
    nodes = [
        Candidate(node_id=f"n{i}", region=region, live=live, usable=usable, free=free)
        for i, (free, live, region) in enumerate(frees)
    ]
    fitting = {n.node_id for n in nodes if n.region == "r1" and n.live and not shortfall(n.free, want)}
    try:
        ranked = rank(nodes, want=want, region="r1", strategy=strategy)
    except NoValidHost as refusal:
        assert not fitting
        assert "region r1" in str(refusal)
    else:
        assert {c.node_id for c in ranked} == fitting
