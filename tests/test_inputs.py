"""What users pass in and get back (issue 19): gradients, numpy, lists, id iterables, empty and
untrained indexes, device and precision names, approx_topk as a torch.topk drop-in."""

import numpy as np
import pytest
import torch

import peakknn
from peakknn import Index, PartitionedIndex, PartitionSettings
from peakknn.evaluation import exact_rank


def _data(n=300, d=8, nq=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(nq, d, generator=g)


def _indexes(x):
    flat = Index(x.shape[1], precision="fp32")
    flat.add(x)
    part = PartitionedIndex(x.shape[1], settings=PartitionSettings(partitions=4, train_size=x.shape[0]))
    part.add(x)
    assert part.is_trained
    return flat, part


def _same(a, b):
    assert torch.equal(torch.as_tensor(a.ids), torch.as_tensor(b.ids))
    assert torch.allclose(torch.as_tensor(a.scores), torch.as_tensor(b.scores))


def test_tensors_with_gradients_are_searched_and_results_carry_none():
    x, q = _data()
    layer = torch.nn.Linear(8, 8)
    xg, qg = layer(x), layer(q)  # outputs of a module: requires_grad, grad_fn set
    assert qg.requires_grad
    plain = peakknn.search(qg.detach(), xg.detach(), 4)
    got = peakknn.search(qg, xg, 4)
    _same(got, plain)
    assert not got.scores.requires_grad
    flat, part = _indexes(xg.detach())
    flat_g, part_g = _indexes(xg)  # add accepts them too
    for a, b in ((flat, flat_g), (part, part_g)):
        _same(a.search(qg, 4), a.search(qg.detach(), 4))
        _same(b.search(qg.detach(), 4), a.search(qg.detach(), 4))


def test_numpy_in_numpy_out_lists_in_tensors_out():
    x, q = _data()
    flat, part = _indexes(x)
    searches = (
        lambda qs: peakknn.search(qs, x, 4, recall_target=1.0),
        lambda qs: flat.search(qs, 4),
        lambda qs: part.search(qs, 4, probe=4),
    )
    for run in searches:
        want = run(q)
        got = run(q.numpy())
        assert isinstance(got.ids, np.ndarray) and isinstance(got.scores, np.ndarray)
        assert got.ids.dtype == np.int64 and got.scores.dtype == np.float32
        _same(got, want)
        _same(got.torch(), want.numpy())
        from_list = run(q.tolist())
        assert isinstance(from_list.ids, torch.Tensor)
        _same(from_list, want)
        _same(run(q.double().numpy()), want)
    # a database given as a list, and a list of ints as numbers
    _same(peakknn.search(q, x.tolist(), 3, recall_target=1.0), peakknn.search(q, x, 3, recall_target=1.0))
    ints = [[1, 0], [0, 2]]
    assert peakknn.search(ints, ints, 1).ids.tolist() == [[0], [1]]


def test_strided_and_low_precision_inputs():
    x, q = _data(d=16)
    want = peakknn.search(q, x, 5, recall_target=1.0)
    xt = x.t().contiguous().t()  # column-major
    _same(peakknn.search(q[:, :], xt, 5, recall_target=1.0), want)
    wide = torch.zeros(x.shape[0], 32)
    wide[:, ::2] = x
    _same(peakknn.search(q, wide[:, ::2], 5, recall_target=1.0), want)
    flat = Index(16, precision="fp32")
    flat.add(xt)
    _same(flat.search(q.numpy()[:, ::1], 5), want)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):  # exact for its own rounded values
        got = peakknn.search(q.to(dtype), x.to(dtype), 5, recall_target=1.0)
        ref = exact_rank(q.to(dtype), x.to(dtype), "ip")
        best = ref.topk(5, dim=1).values
        assert torch.allclose(ref.gather(1, got.ids), best, atol=1e-4)  # ties allowed
        assert torch.allclose(got.scores.double(), best, atol=1e-4)


@pytest.mark.parametrize("kind", ["flat", "part"])
def test_allowed_ids_as_any_iterable_of_ints(kind):
    x, q = _data()
    flat, part = _indexes(x)
    index = flat if kind == "flat" else part
    kw = {} if kind == "flat" else {"probe": 4}
    allowed = [3, 17, 42, 100, 299]
    want = index.search(q, 3, allowed_ids=torch.tensor(allowed), **kw)
    assert set(want.ids.flatten().tolist()) <= set(allowed)
    for form in (set(allowed), frozenset(allowed), tuple(allowed), np.array(allowed), (i for i in allowed), {i: 0 for i in allowed}.keys(), allowed + [3, 10**6, 2**70]):
        _same(index.search(q, 3, allowed_ids=form, **kw), want)
    _same(index.search(q, 3, allowed_ids=range(0, 300, 7), **kw), index.search(q, 3, allowed_ids=list(range(0, 300, 7)), **kw))
    for bad, err in (([1.5], TypeError), ([True], TypeError), ("abc", TypeError), ([-1], ValueError), ([[1, 2]], ValueError)):
        with pytest.raises(err, match="allowed_ids"):
            index.search(q, 3, allowed_ids=bad, **kw)


def test_remove_takes_a_set_but_add_wants_ordered_ids():
    x, _ = _data(n=20)
    for index in (Index(8), PartitionedIndex(8, settings=PartitionSettings(partitions=2, train_size=10))):
        index.add(x)
        index.remove({3, 5})
        assert 3 not in index and 5 not in index and len(index) == 18
        with pytest.raises(TypeError, match="ids must be an ordered sequence"):
            index.add(x[:2], ids={100, 101})
        assert len(index) == 18
        for odd in ("a", 2.0, None, -1, 2**80, True):
            assert odd not in index
        assert 4 in index and np.int64(4) in index


def test_empty_and_untrained_indexes_answer_like_search_on_few_rows():
    x, q = _data(n=40)
    for metric in ("ip", "l2", "cos"):
        zero = peakknn.search(q, torch.zeros(0, 8), 3, metric=metric)
        for index in (Index(8, metric=metric), PartitionedIndex(8, metric=metric)):
            _same(index.search(q, 3), zero)
            assert (torch.as_tensor(index.search(q.numpy(), 3).ids) == -1).all()
        part = PartitionedIndex(8, metric=metric)  # train_size not reached: stays untrained
        part.add(x)
        assert not part.is_trained
        exact = peakknn.search(q, x, 3, metric=metric, recall_target=1.0)
        _same(part.search(q, 3), exact)
        _same(part.search(q, 3, recall_target=0.9), exact)
        got = part.search(q, 50, allowed_ids={1, 2, 3})  # fewer allowed rows than k: fillers after
        assert sorted(got.ids[0, :3].tolist()) == [1, 2, 3] and (got.ids[:, 3:] == -1).all()


def test_device_and_precision_errors_name_the_parameter():
    if not torch.cuda.is_available():
        for cls in (Index, PartitionedIndex):
            with pytest.raises(ValueError, match="device='cuda'"):
                cls(8, device="cuda")
    for cls in (Index, PartitionedIndex):
        with pytest.raises(ValueError, match="device='gpu7'"):
            cls(8, device="gpu7")
        with pytest.raises(TypeError, match="device"):
            cls(8, device=1.5)
    with pytest.raises(ValueError, match="^dtype must be"), pytest.warns(DeprecationWarning):
        Index(8, dtype="fp16")
    with pytest.raises(ValueError, match="^precision must be"):
        Index(8, precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        peakknn.search(torch.ones(1, 2), torch.ones(3, 2), 1, precision=torch.int8)


@pytest.mark.parametrize("n", [3, 10, 50, 1000, 20000])
def test_approx_topk_returns_torch_return_types_topk(n):
    x = torch.randn(4, n, requires_grad=True)
    k = min(3, n)
    out = peakknn.approx_topk(x, k)
    ref = torch.topk(x, k)
    assert type(out) is type(ref)
    assert out.values.shape == ref.values.shape and out.indices.dtype == torch.int64
    assert torch.equal(out.values, x.gather(1, out.indices))
    assert (out.values[:, :-1] >= out.values[:, 1:]).all()  # sorted
    values, indices = out
    assert values is out.values and indices is out.indices
    out.values.sum().backward()  # gradients reach the selected entries only
    assert torch.equal(x.grad, torch.zeros_like(x).scatter(1, out.indices, 1.0))
    # torch.topk's positional order (x, k, dim, largest, sorted)
    small = peakknn.approx_topk(x.detach(), k, 1, False, False, recall_target=1.0)
    assert torch.equal(small.values, torch.topk(x.detach(), k, 1, False, True).values)
    for bad in ({"largest": 1}, {"sorted": "yes"}, {"dim": 1.0}):
        with pytest.raises(TypeError, match=next(iter(bad))):
            peakknn.approx_topk(x, k, **bad)


def test_public_docstrings_stand_alone():
    """help(peakknn.search) etc. must say what the function does, not point at a module the
    user cannot reach (peakknn.search the function shadows peakknn.search the module)."""
    for obj in (peakknn.search, peakknn.approx_topk, Index, PartitionedIndex, Index.search, PartitionedIndex.search):
        doc = obj.__doc__ or ""
        assert len(doc) > 200 or obj in (Index.search,) and len(doc) > 100, obj
        assert "see the module docstring" not in doc and "(see module docstring)" not in doc, obj
    assert "recall_target" in peakknn.search.__doc__ and "numpy" in peakknn.search.__doc__


def test_numpy_arrays_of_any_layout():
    x, q = _data(n=50, d=4)
    want = peakknn.search(q, x, 3, recall_target=1.0)
    xn, qn = x.numpy(), q.numpy()
    frozen = xn.copy()
    frozen.setflags(write=False)
    for db in (xn.astype(">f4"), frozen, np.asfortranarray(xn), xn[::-1][::-1]):
        _same(peakknn.search(qn, db, 3, recall_target=1.0), want)
    one = np.random.default_rng(0).standard_normal((3, 4))[::-1][:1]  # one row, negative strides
    assert one.strides[0] < 0
    flat = Index(4, precision="fp32")
    flat.add(one)
    assert torch.equal(flat.get([0]), torch.from_numpy(one.copy()).float())


def test_search_options_are_checked_everywhere():
    x, q = _data(n=50, d=4)
    part = PartitionedIndex(4, settings=PartitionSettings(partitions=4, train_size=1000))
    part.add(x)  # untrained
    runs = (
        lambda **kw: peakknn.search(q, x, 3, **kw),
        lambda **kw: Index(4).search(q, 3, **kw),  # empty
        lambda **kw: part.search(q, 3, **kw),
    )
    for run in runs:
        for kw, err in (
            ({"rerank": 0}, ValueError), ({"rerank": "2"}, TypeError), ({"rerank": 1.5}, TypeError),
            ({"max_memory": 0}, ValueError), ({"max_memory": None}, TypeError),
            ({"allowed_ids": [1.5]}, TypeError), ({"recall_target": "0.9"}, TypeError), ({"recall_target": 0}, ValueError),
        ):
            with pytest.raises(err, match=next(iter(kw))):
                run(**kw)
    with pytest.raises(TypeError, match="k"):
        part.probe_for(0.5, None)


def test_huge_and_tiny_rows():
    g = torch.Generator().manual_seed(3)
    x, q = torch.randn(20, 3, generator=g, dtype=torch.float64), torch.randn(2, 3, generator=g, dtype=torch.float64)
    want = peakknn.search(q, x, 4, metric="cos", recall_target=1.0)
    for scale in (1e30, 1e-30):  # cosine: the direction is all that counts
        _same(peakknn.search(q, x * scale, 4, metric="cos", recall_target=1.0), want)
        index = Index(3, metric="cos", precision="fp32")
        index.add(x * scale)
        _same(index.search(q / scale, 4), want)
    for metric in ("ip", "l2"):  # products that overflow float32 are refused, naming the argument
        with pytest.raises(ValueError, match="database has entries up to .*overflow float32"):
            peakknn.search(q, x * 1e30, 2, metric=metric)
        with pytest.raises(ValueError, match="queries"):
            Index(3, metric=metric).search(q * 1e30, 2)
        got = peakknn.search(q * 1e15, x * 1e15, 4, metric=metric, recall_target=1.0)  # large but finite
        assert torch.isfinite(got.scores).all() and (got.ids >= 0).all()


def test_settings_values_are_checked_and_low_dims_train_anisotropic():
    for kw, err in (({"seed": "x"}, TypeError), ({"seed": 1.5}, TypeError), ({"seed": -1}, ValueError), ({"threshold": "x"}, TypeError)):
        with pytest.raises(err, match=next(iter(kw))):
            PartitionSettings(**kw)
    assert PartitionSettings(seed=np.int64(3)).seed == 3
    for kw in ({"partitions": 64, "train_size": 10}, {"codes": "pq4", "partitions": 2, "train_size": 10}):
        with pytest.raises(ValueError, match="train_size=10 is below"):  # the add reaching it could not train
            PartitionSettings(**kw)
    x, q = _data(n=300, d=8)
    index = PartitionedIndex(8, settings=PartitionSettings(partitions=4, anisotropic_partitions=True, train_size=None))
    index.add(x)
    index.train()  # eta of T = 0.2 in 8 dims is below 1: plain k-means partitions
    assert index.is_trained and (index.search(q, 3, probe=4).ids >= 0).all()


def test_load_errors_name_the_path(tmp_path):
    flat = Index(4)
    flat.add(torch.randn(5, 4))
    flat.save(tmp_path / "i")
    arrays = next((tmp_path / "i").glob("arrays-*.safetensors"))
    arrays.unlink()
    arrays.mkdir()  # a directory where the arrays file was
    for load in (Index.load, peakknn.load):
        with pytest.raises(ValueError, match="cannot be read"):
            load(tmp_path / "i")
        with pytest.raises(TypeError, match="path"):
            load(5)


def test_approx_topk_of_an_empty_batch():
    for per_bin in (1, 2):
        out = peakknn.approx_topk(torch.randn(0, 300), 2, recall_target=0.5, per_bin=per_bin)
        assert out.values.shape == (0, 2) and out.indices.shape == (0, 2)
