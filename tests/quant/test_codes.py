"""Codes of the partitioned index (peakknn.quant.codes): 4-bit packing, int8 codes, anisotropic
product quantization, and the principal directions / calibrated widths of projected rows."""

import torch
from partitioned_helpers import build, low_rank

from peakknn.data import clustered
from peakknn.quant import ProductQuantizer, anisotropic_loss, eta_from_threshold
from peakknn.quant.codes import Int8Codes, pack, unpack


def test_pack_unpack_round_trip():
    codes = torch.randint(0, 16, (50, 7))
    assert torch.equal(unpack(pack(codes), 7).to(torch.int64), codes)


def test_int8_codes_error_is_bounded():
    x = torch.randn(1000, 24)
    codec = Int8Codes.train(x)
    err = (codec.decode(codec.encode(x)) - x).abs()
    assert float((err / codec.scale).max()) <= 0.5 + 1e-4
    q = torch.randn(5, 24)
    torch.testing.assert_close(
        (codec.scan_queries(q).float() @ codec.scan_rows(codec.encode(x)).float().T),
        q @ codec.decode(codec.encode(x)).T,
        rtol=5e-2,
        atol=5e-2,
    )


def test_anisotropic_pq_lowers_the_error_of_top_scoring_pairs():
    """The paper's claim for codes: at equal bits, the score-aware loss gives a smaller
    inner-product error on each query's top pairs than plain PQ (reconstruction loss)."""
    ds = clustered(6000, 32, 100, clusters=30, spread=0.25, seed=13)
    x = torch.nn.functional.normalize(torch.from_numpy(ds.train), dim=1)
    q = torch.nn.functional.normalize(torch.from_numpy(ds.test), dim=1)
    eta = eta_from_threshold(0.2, 32)
    plain = ProductQuantizer.train(x, 2, eta=1.0, seed=0)
    aniso = ProductQuantizer.train(x, 2, eta=eta, directions=x, seed=0)
    exact = q @ x.T
    top = exact.topk(10, dim=1).indices

    def top_error(pq, eta_encode):
        approx = q @ pq.decode(pq.encode(x, x, eta_encode)).T
        return float((approx - exact).gather(1, top).abs().mean())

    plain_err, aniso_err = top_error(plain, 1.0), top_error(aniso, eta)
    assert aniso_err < 0.9 * plain_err, (aniso_err, plain_err)
    # and it is the anisotropic loss that went down
    lp = anisotropic_loss(x, plain.decode(plain.encode(x)), eta).mean()
    la = anisotropic_loss(x, aniso.decode(aniso.encode(x, x, eta)), eta).mean()
    assert la < lp


def test_calibrated_dims_is_the_fewest_that_reach_the_target():
    from peakknn.quant.codes import DIMS_MULTIPLE, calibrated_dims, principal_directions

    x, _ = low_rank(n=4000, d=64, seed=3)
    basis = principal_directions(x, 64)
    torch.testing.assert_close(basis.T @ basis, torch.eye(64), atol=1e-4, rtol=0)

    def kept(m):  # the same measurement, done independently
        g = torch.Generator().manual_seed(0)
        pick = torch.randperm(x.shape[0], generator=g)[:256]
        exact, approx = x[pick] @ x.T, (x[pick] @ basis[:, :m]) @ (x @ basis[:, :m]).T
        exact[torch.arange(256), pick] = approx[torch.arange(256), pick] = float("-inf")
        truth_ids, found = torch.topk(exact, 10, dim=1).indices, torch.topk(approx, 20, dim=1).indices
        return float((found.unsqueeze(2) == truth_ids.unsqueeze(1)).any(1).float().mean())

    for target in (0.9, 0.995):
        m = calibrated_dims(x, basis, 10, 20, target)
        assert m % DIMS_MULTIPLE == 0 and m < 64
        assert kept(m) >= target
        assert m == DIMS_MULTIPLE or kept(m - DIMS_MULTIPLE) < target
    # isotropic data: every direction matters, so all dims are kept (no projection)
    iso = torch.randn(4000, 64, generator=torch.Generator().manual_seed(4))
    assert calibrated_dims(iso, principal_directions(iso, 64), 10, 20, 0.995) == 64
    index = build(iso[:3000], "ip", partitions=8)  # scan_dims="auto" is the default
    assert index._projection is None and index.scan_dims == 64
