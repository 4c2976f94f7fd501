"""``train.optimizer``: Adam, or lazy row-wise Adam on the tables (``sparse_adam``)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from embdim.config import TrainConfig, config_from_dict
from embdim.errors import ConfigError
from embdim.nn.models import build_model
from embdim.train.optim import LazyAdam, TableAdam, make_optimizer, resolve_optimizer


def _batch(vocab, rows=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, v // 2, (rows,), generator=g) for v in vocab], 1)  # low half
    return ids, torch.randint(0, 2, (rows,), generator=g).float()


@pytest.mark.parametrize("model_name", ["deepfm", "widedeep"])
def test_sparse_adam_moves_only_the_rows_a_batch_reads(model_name):
    vocab = [40, 60, 30]
    model = build_model(model_name, vocab, dim=4, options={"mlp": [8]})
    opt = make_optimizer(model, "sparse_adam", lr=0.01)
    assert isinstance(opt, TableAdam)
    tables = [p for g in opt.sparse.param_groups for p in g["params"]]
    assert len(tables) == 2  # the embedding table and the first-order weights
    before = [t.detach().clone() for t in tables]
    ids, y = _batch(vocab)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(ids), y).backward()
        assert all(t.grad.is_sparse for t in tables)
        opt.step()
    offsets = torch.tensor([0, 40, 100])
    read = torch.zeros(130, dtype=torch.bool)
    read[(ids + offsets).unique()] = True
    for t, b in zip(tables, before, strict=True):
        moved = (t.detach() != b).any(1)
        assert moved[read].all() and not moved[~read].any()


def test_dense_adam_keeps_moving_rows_after_the_batch_has_left():
    """What sets the two apart: with momentum, dense Adam changes a row on steps that do not read
    it (zero gradient), lazy Adam does not."""
    vocab = [40, 60, 30]
    changed = {}
    for name in ("adam", "sparse_adam"):
        torch.manual_seed(0)
        model = build_model("deepfm", vocab, dim=4, options={"mlp": [8]})
        opt = make_optimizer(model, name, lr=0.01)
        table = model.embedding.groups[0].table.weight
        for step, seed in enumerate((0, 1)):
            ids, y = _batch(vocab, seed=seed)
            if step == 1:
                ids = ids.clone()
                ids[:, 0] = 39  # the second batch never reads field 0's rows 0..19
                snapshot = table.detach()[:20].clone()
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(model(ids), y).backward()
            opt.step()
        changed[name] = bool((table.detach()[:20] != snapshot).any())
    assert changed == {"adam": True, "sparse_adam": False}


def test_sparse_adam_trains_and_resumes_exactly(planted, interrupt_and_resume):
    cfg = config_from_dict({"data": {"path": str(planted)}, "model": {"name": "widedeep", "mlp": [16]},
                            "method": {"name": "fde", "dim": 8},
                            "train": {"epochs": 3, "batch_size": 500, "lr": 3e-3, "early_stop": 0,
                                      "seed": 7, "optimizer": "sparse_adam"}})
    full, resumed = interrupt_and_resume(cfg)
    assert full["test_auc"] > 0.70
    assert resumed["test_auc"] == full["test_auc"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]


def test_optimizer_option_is_checked():
    with pytest.raises(ConfigError, match="train.optimizer must be"):
        TrainConfig(optimizer="sgd").validate()
    with pytest.raises(ConfigError, match="no weight decay"):
        TrainConfig(optimizer="sparse_adam", weight_decay=1e-5).validate()


def test_auto_is_lazy_adam_for_large_vocabularies_in_one_cpu_process_and_adam_elsewhere():
    def resolve(**changes):
        where = {"device_type": "cpu", "distributed": False, "sharded": False, "weight_decay": 0.0,
                 "vocabulary": 1_000_000, "rows_per_batch": 4096 * 39}
        return resolve_optimizer("auto", **{**where, **changes})

    assert resolve() == "sparse_adam"
    assert resolve(vocabulary=3 * 4096 * 39) == "sparse_adam"
    assert resolve(vocabulary=3 * 4096 * 39 - 1) == "adam"  # dense Adam is faster on small tables
    assert resolve(device_type="cuda") == "adam"  # dense Adam inside the step's CUDA graph
    assert resolve(distributed=True) == "adam"  # DDP averages dense gradients
    assert resolve(weight_decay=1e-5) == "adam"  # lazy Adam has no weight decay
    assert resolve(sharded=True, distributed=True) == "rowwise_adagrad"  # FBGEMM's fused rule
    for name in ("adam", "sparse_adam", "rowwise_adagrad"):  # a named optimiser is kept
        assert resolve_optimizer(name, device_type="cuda", distributed=True, sharded=False,
                                 weight_decay=0.0, vocabulary=10, rows_per_batch=10**6) == name
    TrainConfig(optimizer="auto", weight_decay=1e-5).validate()  # resolves to adam: accepted
    TrainConfig(optimizer="auto", parallel="torchrec").validate()


def test_the_default_run_trains_large_tables_with_lazy_adam_and_records_it(planted, tmp_path):
    """The planted data has ~800 ids over 6 fields: batches of 32 read 192 rows (lazy Adam),
    batches of 500 read 3,000 (Adam)."""
    from embdim.data.dataset import PreparedDataset
    from embdim.experiment import run_experiment
    from embdim.train.trainer import Trainer

    cfg = config_from_dict({"data": {"path": str(planted)}, "model": {"name": "deepfm", "mlp": [16]},
                            "method": {"name": "fde", "dim": 8},
                            "train": {"epochs": 1, "batch_size": 32, "seed": 3}})
    assert cfg.train.optimizer == "auto"
    metrics = run_experiment(cfg, tmp_path / "run", quiet=True)
    assert metrics["optimizer"] == "sparse_adam"
    assert "train.optimizer auto: sparse_adam" in (tmp_path / "run" / "log.txt").read_text()
    dataset = PreparedDataset(planted)
    trainer = Trainer(build_model("deepfm", dataset.schema, dim=8), dataset,
                      TrainConfig(batch_size=32), quiet=True)
    assert isinstance(trainer.optimizer, TableAdam) and isinstance(trainer.optimizer.sparse, LazyAdam)
    large_batches = TrainConfig(batch_size=500)
    trainer = Trainer(build_model("deepfm", dataset.schema, dim=8), dataset, large_batches, quiet=True)
    assert isinstance(trainer.optimizer, torch.optim.Adam) and trainer.optimizer_name == "adam"
    explicit = config_from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "optimizer": "adam"}})
    assert run_experiment(explicit, tmp_path / "adam", quiet=True)["optimizer"] == "adam"


@pytest.mark.parametrize("size", [1, 7, 500])
def test_distinct_rows_is_torch_unique_without_sorting_the_batch(size):
    from embdim.nn.embedding import distinct_rows

    g = torch.Generator().manual_seed(size)
    slots = torch.full((1000,), -5, dtype=torch.long)
    marks = torch.zeros(1000, dtype=torch.uint8)  # used while the table has <= 8 rows per row read
    for rows in (torch.randint(0, 1000, (size,), generator=g),
                 torch.randint(0, 3, (size,), generator=g),  # few values, many duplicates
                 torch.full((size,), 999)):
        expected = torch.unique(rows, sorted=True, return_inverse=True)
        for scratch in ((slots,), (slots, marks)):
            distinct, inverse = distinct_rows(rows, *scratch)
            assert torch.equal(distinct, expected[0]) and torch.equal(inverse, expected[1])
            assert not marks.any()  # left all zero for the next call


def test_sparse_table_gradient_is_the_summed_rows_read_each_once_in_order():
    """The sparse gradient of a table lookup (``gather_rows(..., sparse=True)``) equals
    ``F.embedding(sparse=True)``'s, with each row read exactly once and in increasing order, so
    the optimisers need no sort to coalesce it."""
    from embdim.nn.embedding import gather_rows
    from embdim.train.optim import coalesced

    g = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(50, 4, generator=g))
    rows = torch.randint(0, 20, (300,), generator=g)
    upstream = torch.randn(300, 4, generator=g)
    (gather_rows(weight, rows, sparse=True) * upstream).sum().backward()
    ours = weight.grad
    weight.grad = None
    (torch.nn.functional.embedding(rows, weight, sparse=True) * upstream).sum().backward()
    reference = weight.grad.coalesce()
    assert ours.is_sparse and torch.equal(ours._indices(), reference._indices())
    torch.testing.assert_close(ours._values(), reference._values())
    assert coalesced(ours).is_coalesced()


def test_coalesced_sums_duplicate_rows_of_other_sparse_gradients():
    from embdim.train.optim import coalesced

    grad = torch.sparse_coo_tensor(torch.tensor([[3, 1, 3]]), torch.ones(3, 2), (5, 2),
                                   check_invariants=True)
    out = coalesced(grad)
    assert out._indices().tolist() == [[1, 3]] and out._values().tolist() == [[1, 1], [2, 2]]
    unsorted = torch.sparse_coo_tensor(torch.tensor([[4, 0]]), torch.ones(2, 2), (5, 2),
                                        check_invariants=True)
    assert coalesced(unsorted)._indices().tolist() == [[0, 4]]


def test_lazy_adam_is_torch_sparse_adam():
    """``LazyAdam`` (the tables' optimiser for ``sparse_adam``) computes torch's SparseAdam update
    and keeps its state: same values after several steps, state dicts interchangeable."""
    from embdim.nn.embedding import gather_rows
    from embdim.train.optim import LazyAdam

    g = torch.Generator().manual_seed(1)
    ours = torch.nn.Parameter(torch.randn(60, 3, generator=g))
    theirs = torch.nn.Parameter(ours.detach().clone())
    opt_ours, opt_theirs = LazyAdam([ours], lr=0.05), torch.optim.SparseAdam([theirs], lr=0.05)
    for step in range(6):
        rows = torch.randint(0, 20 + 6 * step, (40,), generator=g)  # new rows appear over time
        upstream = torch.randn(40, 3, generator=g)
        (gather_rows(ours, rows, sparse=True) * upstream).sum().backward()
        (torch.nn.functional.embedding(rows, theirs, sparse=True) * upstream).sum().backward()
        opt_ours.step()
        opt_theirs.step()
        opt_ours.zero_grad()
        opt_theirs.zero_grad()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-5, atol=1e-6)
    state_ours, state_theirs = opt_ours.state[ours], opt_theirs.state[theirs]
    assert state_ours["step"] == state_theirs["step"] == 6
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(state_ours[key], state_theirs[key], rtol=1e-5, atol=1e-7)
    torch.optim.SparseAdam([theirs], lr=0.05).load_state_dict(opt_ours.state_dict())


def test_lookups_of_other_rows_in_one_backward_get_their_own_gradients():
    """The distinct rows of one lookup are reused by the next only when it reads the same rows
    (the embedding table and the first-order weights); a lookup of other rows of an equally long
    table gets its own."""
    from embdim.nn.embedding import gather_rows

    g = torch.Generator().manual_seed(3)
    tables = [torch.nn.Parameter(torch.randn(40, 2, generator=g)) for _ in range(3)]
    rows_a = torch.randint(0, 40, (100,), generator=g)
    rows_b = torch.randint(0, 40, (100,), generator=g)  # same shape, other values
    upstream = torch.randn(100, 2, generator=g)
    loss = sum((gather_rows(t, r, sparse=True) * upstream).sum()
               for t, r in zip(tables, (rows_a, rows_a, rows_b), strict=True))
    loss.backward()
    for t, r in zip(tables, (rows_a, rows_a, rows_b), strict=True):
        reference = torch.zeros(40, 2).index_add_(0, r, upstream)
        torch.testing.assert_close(t.grad.to_dense(), reference)


def test_a_table_read_twice_before_one_backward_gets_both_gradients():
    """Two lookups into one table in the same graph (e.g. two forwards, one loss): the scratch
    space both backward passes use does not trip autograd's in-place check."""
    from embdim.nn.embedding import gather_rows

    weight = torch.nn.Parameter(torch.randn(30, 2))
    first, second = torch.tensor([1, 2, 2]), torch.tensor([2, 5])
    loss = (gather_rows(weight, first, sparse=True).sum()
            + 2 * gather_rows(weight, second, sparse=True).sum())
    loss.backward()
    expected = torch.zeros(30, 2)
    expected[1], expected[2], expected[5] = 1, 2 + 2, 2
    torch.testing.assert_close(weight.grad.to_dense(), expected)


@pytest.mark.parametrize("rule", ["sparse_adam", "rowwise_adagrad"])
def test_fused_row_updates_run_on_cpu_tables_and_equal_the_torch_ops(rule, monkeypatch):
    """On float32 CPU tables the row-wise optimisers update the rows a batch read in one fused
    loop (embdim.train.row_kernels, numba: a dependency, so the fast path must not silently go);
    its result equals the optimisers' torch ops over several steps."""
    from embdim.nn.embedding import gather_rows
    from embdim.train import optim, row_kernels

    numba_installed = importlib.util.find_spec("numba") is not None  # a dependency below Python 3.15
    assert row_kernels.fused_rows_available(torch.zeros(3, 2)) == numba_installed
    if not numba_installed:
        pytest.skip("numba is not installed here: the optimisers' torch ops are the only path")
    calls = []
    for fused_name in ("lazy_adam_rows_", "rowwise_adagrad_rows_"):
        fused = getattr(optim, fused_name)
        monkeypatch.setattr(optim, fused_name,
                            lambda *a, _f=fused, **k: (calls.append(1), _f(*a, **k))[1])

    def train(fused: bool) -> tuple[torch.Tensor, dict]:
        monkeypatch.setattr(optim, "fused_rows_available",
                            row_kernels.fused_rows_available if fused else lambda *t: False)
        g = torch.Generator().manual_seed(5)
        table = torch.nn.Parameter(torch.randn(500, 8, generator=g))
        opt = (optim.LazyAdam([table], lr=0.02) if rule == "sparse_adam"
               else optim.RowwiseAdagrad([table], lr=0.02))
        for _ in range(5):
            rows = torch.randint(0, 500, (300,), generator=g)  # duplicates: summed gradients
            (gather_rows(table, rows, sparse=True) * torch.randn(300, 8, generator=g)).sum().backward()
            opt.step()
            opt.zero_grad()
        return table.detach(), opt.state[table]

    fused_table, fused_state = train(True)
    assert len(calls) == 5
    torch_table, torch_state = train(False)
    assert len(calls) == 5  # the torch ops ran
    torch.testing.assert_close(fused_table, torch_table, rtol=1e-6, atol=1e-7)
    for key in ("exp_avg", "exp_avg_sq", "sum"):
        if key in torch_state:
            torch.testing.assert_close(fused_state[key], torch_state[key], rtol=2e-5, atol=1e-7)


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed here")
def test_the_fused_kernels_leave_torch_s_thread_count_as_train_threads_set_it():
    """Starting numba's threading layer resets the process's OpenMP thread count; the first fused
    update (in a fresh process, where that layer starts) must leave torch's pool at 1 thread."""
    import os
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(1)\n"
            "assert torch.get_num_threads() == 1\n"  # read before numba starts, as the trainers do
            "from embdim.train.row_kernels import lazy_adam_rows_\n"
            "t = torch.zeros(4, 2)\n"
            "lazy_adam_rows_(t, torch.zeros(4, 2), torch.zeros(4, 2), torch.tensor([0, 2]), torch.ones(2, 2),"
            " beta1=0.9, beta2=0.999, step_size=0.1, eps=1e-8)\n"
            "assert float(t[1].abs().sum()) == 0 and float(t[0].abs().sum()) > 0\n"
            "print(torch.get_num_threads())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**env, "EMBDIM_FUSED_ROWS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "1"
