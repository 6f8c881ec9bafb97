"""The automatic per_bin choice (peakknn.topk.costs, plan.plan_topk): which plan the cost model
picks for given unit costs (replaced here, so no timing decides a test), that every candidate
meets the recall target, the network's op counts, and the real calibration's sanity. Whether the
choice is fast on this machine is measured by benchmarks/topk_models.py, not here."""

import math

import pytest
import torch

from peakknn import expected_recall
from peakknn.topk import binned, costs, plan_topk
from peakknn.topk.plan import plan_bins, topk_bins


@pytest.fixture
def fake_costs(monkeypatch):
    """Unit costs shaped like a 2-core CPU's (ns per element); torch.topk costs a*m + b*k*log2(k)
    per row (the float comparison 1.5x the integer one), `scale` multiplies selection costs."""
    state = {"scale": 1.0}

    def units(device, dtype):
        return costs.UnitCosts("cpu", str(dtype), reduce=0.2e-9, keys=0.6e-9, network=0.2e-9, gather=2e-9, op=5e-6)

    def select(m, k, dtype, sorted, device):
        per = (1.5 if dtype.is_floating_point else 1.0) * (3e-9 * m + (1e-9 * k * math.log2(k + 1) if sorted else 0.0))
        return state["scale"] * per

    monkeypatch.setattr(costs, "unit_costs", units)
    monkeypatch.setattr(costs, "select_cost", select)
    costs.reset()
    yield state
    costs.reset()


def test_every_candidate_meets_the_recall_target(fake_costs):
    for n, k, target in ((3072, 128, 0.95), (131072, 50, 0.9), (16384, 64, 0.99), (1000, 5, 0.5)):
        found = costs.candidates(64, n, k, target, torch.float32, "cpu")
        assert found[0].per_bin is None and found[0].bins is None  # exact competes
        for c in found[1:]:
            assert c.bins == topk_bins(n, k, target, c.per_bin)
            assert expected_recall(k, c.bins, per_bin=c.per_bin) >= target
            assert n >= 4 * c.bins * c.per_bin


def test_choice_is_the_cheapest_prediction(fake_costs):
    for rows, n, k in ((8192, 3072, 128), (8192, 16384, 64), (64, 131072, 50), (512, 2097152, 100), (16, 500, 3)):
        plan = plan_topk(rows, n, k, 0.95)
        found = costs.candidates(rows, n, k, 0.95, torch.float32, "cpu")
        best = min(found, key=lambda c: c.seconds)
        assert (plan.per_bin, plan.bins) == (best.per_bin, best.bins)
        assert plan.predicted == pytest.approx(best.seconds)


def test_long_rows_take_one_winner_per_bin_and_short_rows_several(fake_costs):
    long = plan_topk(64, 2097152, 100, 0.95)
    assert long.per_bin == 1  # the reduction pass dominates; per_bin > 1 only adds work per element
    short = plan_topk(8192, 3072, 128, 0.95)
    assert short.per_bin is not None and short.per_bin > 1  # per_bin = 1 needs ~n bins there
    assert plan_bins(3072, 128, 0.95, 1) is None


def test_a_cheap_torch_topk_is_chosen_when_it_is_cheapest(fake_costs):
    assert not plan_topk(8192, 3072, 128, 0.95).exact
    fake_costs["scale"] = 1e-3  # selection nearly free: every binned plan costs more than torch.topk
    costs.reset()
    assert plan_topk(8192, 3072, 128, 0.95).exact


def test_choice_is_kept_per_shape_and_rows_power_of_two(fake_costs, monkeypatch):
    calls = []
    real = costs.candidates

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(costs, "candidates", counting)
    a = plan_topk(1000, 3072, 128, 0.95)
    b = plan_topk(1024, 3072, 128, 0.95)  # same power of two of rows: kept
    c = plan_topk(1025, 3072, 128, 0.95)  # the next: decided again
    assert a == b and len(calls) == 2 and calls[0][0] == 1024 and calls[1][0] == 2048 and c.per_bin is not None


def test_given_per_bin_and_exact_targets_bypass_the_model(fake_costs, monkeypatch):
    monkeypatch.setattr(costs, "choose", lambda *a, **k: pytest.fail("the cost model ran"))
    assert plan_topk(64, 3072, 128, 0.95, per_bin=4).bins == topk_bins(3072, 128, 0.95, 4)
    assert plan_topk(64, 3072, 128, 0.95, per_bin=1).exact  # per_bin = 1 needs too many bins here
    assert plan_topk(64, 3072, 128, 1.0).exact and plan_topk(64, 100, 100, 0.9).exact


def test_float64_has_no_key_path(fake_costs):
    assert all(c.per_bin in (None, 1) for c in costs.candidates(64, 3072, 64, 0.9, torch.float64, "cpu"))


def test_topk_bins_is_a_prime_at_least_plan_bins():
    for n, k, target, p in ((20000, 10, 0.95, 1), (3072, 128, 0.95, 2), (131072, 50, 0.9, 4), (10**6, 100, 0.99, 1)):
        base, bins = plan_bins(n, k, target, p), topk_bins(n, k, target, p)
        assert bins >= base and all(bins % d for d in range(2, math.isqrt(bins) + 1))
    assert topk_bins(100, 10, 0.95, 1) is None  # too short for any reduction


@pytest.mark.parametrize("groups,per_bin", [(16, 2), (48, 4), (7, 3), (300, 2), (64, 8)])
def test_network_op_counts_are_what_runs(groups, per_bin, monkeypatch):
    """network_ops (the model's counts) against the max / min calls of a real network."""
    bins, rows = 5, 3
    s = binned.streams(groups)
    padded = -(-groups // s) * s
    work = binned._KeyWork(rows, padded, bins, padded * bins, per_bin, s, torch.int32, torch.int64, torch.device("cpu"))
    keys = torch.randint(-(2**40), 2**40, (rows, padded, bins))
    counted = {"ops": 0, "elements": 0}
    for name in ("maximum", "minimum"):
        real = getattr(torch, name)

        def wrapped(a, b, *, out=None, real=real):
            counted["ops"] += 1
            counted["elements"] += b.numel()
            return real(a, b, out=out)

        monkeypatch.setattr(binned.torch, name, wrapped)
    winners = binned._network(keys, per_bin, s, work)
    monkeypatch.undo()
    ops, touched = binned.network_ops(padded, per_bin)
    assert counted["ops"] == ops and counted["elements"] == touched * bins * rows
    want = torch.sort(keys, dim=1, descending=True).values[:, :per_bin]  # [rows, per_bin, bins]
    assert torch.equal(winners.view(rows, per_bin, bins), want)


def test_real_calibration_is_sane_and_restores_threads():
    costs.reset()
    threads = torch.get_num_threads()
    u = costs.unit_costs("cpu", torch.float32)
    assert torch.get_num_threads() == threads
    for value in (u.reduce, u.keys, u.network, u.gather, u.op):
        assert 0 < value < 1e-3 and math.isfinite(value)
    per_row = costs.select_cost(3072, 128, torch.float32, True, "cpu")
    assert 0 < per_row < 1e-2 and costs.select_cost(3072, 128, torch.float32, True, "cpu") == per_row  # kept
    costs.reset()


def test_large_cpu_calls_time_torch_topk_against_the_models_shortlist(monkeypatch):
    """approx.choose_plan on a CPU call of TIMED_MIN_ELEMENTS or more: the model shortlists,
    timing decides (here the timing is replaced: whichever plan it says is fastest is used)."""
    from peakknn.topk import approx

    rows, n, k = 64, 131072, 50
    for winner in ("exact", "binned"):
        approx._TIMED.clear()
        timed = []

        def fastest(run, sample, kk, plans, *, rows, sorted=True, winner=winner):
            timed.append(([(c.per_bin, c.bins) for c in plans], tuple(sample.shape)))
            assert sample.shape[1] == n and sample.numel() <= max(n, approx.SAMPLE_ELEMENTS)
            assert run(sample[:2], kk, plans[-1].per_bin, plans[-1].bins).shape == (2, kk)  # the torch path, really
            pick = plans[0] if winner == "exact" else plans[-1]
            return costs.Candidate(pick.per_bin, pick.bins, 1.0)

        monkeypatch.setattr(costs, "fastest", fastest)
        plan = approx.choose_plan(rows, n, k, 0.95, None, torch.float32, "cpu", False, True)
        again = approx.choose_plan(rows, n, k, 0.95, None, torch.float32, "cpu", False, True)
        assert plan == again and len(timed) == 1  # kept per shape
        shortlisted = timed[0][0]
        assert shortlisted[0] == (None, None) and 1 < len(shortlisted) <= 1 + costs.SHORTLIST  # torch.topk competes
        assert plan.exact == (winner == "exact")
    approx._TIMED.clear()
    monkeypatch.setattr(costs, "fastest", lambda *a, **kw: pytest.fail("a small call was timed"))
    small = approx.choose_plan(4, 3072, 128, 0.95, None, torch.float32, "cpu", False, True)  # below TIMED_MIN_ELEMENTS: the model alone
    assert small == plan_topk(4, 3072, 128, 0.95)
    approx._TIMED.clear()
