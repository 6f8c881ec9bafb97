"""The network term of a sharded search (peakknn.perfmodel.network): the alpha-beta model against
its formulas written out, the stated links, and the measurement's guard. The collectives a real
search issues, and a measurement under gloo, are checked in tests/distributed/test_network_model.py."""

from __future__ import annotations

import math

import pytest

from peakknn import perfmodel
from peakknn.perfmodel import network
from peakknn.perfmodel.network import LINKS, Link, Traffic, kmeans_traffic, search_traffic


def test_exported_from_perfmodel():
    assert perfmodel.network is network
    assert perfmodel.Link is Link and perfmodel.search_traffic is search_traffic and "LINKS" in perfmodel.__all__


@pytest.mark.parametrize("bad", [{"bandwidth": 0}, {"bandwidth": float("inf")}, {"latency_s": -1e-6}, {"latency_s": float("nan")}, {"algorithm": "mesh"}])
def test_link_rejects_bad_figures(bad):
    args = {"name": "x", "bandwidth": 1e9, "latency_s": 1e-5} | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        Link(**args)


@pytest.mark.parametrize("world,ring,tree", [(1, 0, 0), (2, 1, 1), (3, 2, 2), (8, 7, 3), (64, 63, 6), (65, 64, 7)])
def test_steps_per_collective(world, ring, tree):
    assert Link("r", 1e9, 1e-5, "ring").steps(world) == ring
    assert Link("t", 1e9, 1e-5, "tree").steps(world) == tree


@pytest.mark.parametrize("world", [0, -1, 2.0, True])
def test_world_must_be_a_positive_int(world):
    with pytest.raises(ValueError, match="world"):
        search_traffic(10, 10, 8, world)


@pytest.mark.parametrize("nq,k,dim,world", [(1000, 10, 768, 8), (1, 1, 1, 2), (37, 100, 384, 3), (0, 10, 128, 4)])
def test_search_traffic_is_the_query_gather_plus_the_candidates(nq, k, dim, world):
    t = search_traffic(nq, k, dim, world)
    share = (world - 1) / world
    assert t.bulk_bytes == pytest.approx(share * nq * dim * 4 + share * nq * k * (4 + 8))
    assert t.collectives == network.SEARCH_COLLECTIVES == 9
    assert 0 < t.small_bytes < 20_000 * world  # agreement rows and sizes: small, growing with the world
    assert t.bytes_per_rank == t.bulk_bytes + t.small_bytes


def test_one_rank_moves_nothing():
    assert search_traffic(1000, 10, 768, 1) == Traffic(0.0, 0.0, 0)
    assert network.predict(search_traffic(1000, 10, 768, 1), LINKS["ib-ndr"], 1).seconds == 0.0
    assert kmeans_traffic(256, 768, 1).bytes_per_rank == 0.0


def test_predict_is_bytes_over_bandwidth_plus_collectives_times_latency():
    link = Link("l", 2e9, 1e-5, "ring")
    t = search_traffic(500, 10, 128, 4)
    p = network.predict(t, link, 4)
    assert p.bandwidth_s == pytest.approx(t.bytes_per_rank / 2e9)
    assert p.latency_s == pytest.approx(9 * 3 * 1e-5)
    assert p.seconds == pytest.approx(p.bandwidth_s + p.latency_s)
    wide = network.predict(search_traffic(500, 10, 128, 8), link, 8)
    assert wide.seconds > p.seconds  # more ranks: more bytes from others and more ring steps


def test_hierarchical_splits_bytes_between_host_mates_and_the_network():
    nv, ib = LINKS["nvlink4"], LINKS["ib-ndr"]
    t = search_traffic(1000, 10, 768, 64)
    p = network.predict(t, ib, 64, ranks_per_host=8, intra=nv)
    near = 7 / 63
    assert p.bandwidth_s == pytest.approx(t.bytes_per_rank * (1 - near) / ib.bandwidth + t.bytes_per_rank * near / nv.bandwidth)
    assert p.latency_s == pytest.approx(9 * ib.latency_s * ib.steps(64))
    one_host = network.predict(search_traffic(1000, 10, 768, 8), ib, 8, ranks_per_host=8, intra=nv)
    assert one_host.bandwidth_s == pytest.approx(search_traffic(1000, 10, 768, 8).bytes_per_rank / nv.bandwidth)
    assert one_host.latency_s == pytest.approx(9 * nv.latency_s * nv.steps(8))
    with pytest.raises(ValueError, match="divide"):
        network.predict(t, ib, 64, ranks_per_host=7, intra=nv)
    with pytest.raises(ValueError, match="intra"):
        network.predict(t, ib, 64, ranks_per_host=8)


def test_quantized_kmeans_sends_about_a_quarter():
    full, q = kmeans_traffic(4096, 768, 8), kmeans_traffic(4096, 768, 8, quantized=True)
    assert full.bulk_bytes == pytest.approx(2 * 7 / 8 * (4096 * 768 * 4 + 4096 * 8))
    assert 0.25 < q.bulk_bytes / full.bulk_bytes < 0.27
    assert q.collectives > full.collectives  # more, smaller collectives: worse where latency rules


def test_stated_links_name_their_sources():
    for name, link in LINKS.items():
        assert link.source and ("github.com" in link.source or "assumption" in link.source), name
        assert link.bandwidth > 1e9 and 0 < link.latency_s < 1e-3, name
    assert LINKS["nvlink4"].bandwidth > LINKS["ib-ndr"].bandwidth > LINKS["ib-hdr"].bandwidth > LINKS["eth-100g"].bandwidth


def test_measure_needs_a_process_group():
    with pytest.raises(RuntimeError, match="init_process_group"):
        network.measure()


def test_predict_stays_finite_for_large_worlds():
    p = network.predict(search_traffic(10_000, 100, 768, 4096), LINKS["eth-25g"], 4096)
    assert math.isfinite(p.seconds) and p.seconds > 0
