"""MDE's per-frequency-block variant: blocks, widths, the block embedding, plan.json, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embdim.config import config_from_dict
from embdim.data.dataset import PreparedDataset
from embdim.data.synthetic import SyntheticSpec, write_synthetic_dataset
from embdim.experiment import run_experiment
from embdim.nn.block_embedding import (
    BlockFieldEmbedding,
    block_ids,
    block_size,
    blocks_to_ranges,
    frequency_blocks,
)
from embdim.nn.models import build_model
from embdim.plan import DimensionPlan
from embdim.search.mde import mde_block_dims, mde_dims


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "small"
    spec = SyntheticSpec(cardinalities=[30, 200, 20, 50], true_dims=[0, 2, 2, 4], seed=5,
                         missing_rate=0.05)
    write_synthetic_dataset(out, spec, 6_000, seed=5, min_count=3)
    return out


def _check_blocks(counts, blocks):
    ids = [i for b in blocks for i in b]
    assert sorted(ids) == list(range(len(counts)))  # every id exactly once
    # frequency order: every id of a block is at least as frequent as every id of a later block
    for a, b in zip(blocks[:-1], blocks[1:], strict=True):
        assert min(counts[i] for i in a) >= max(counts[i] for i in b)


def test_blocks_follow_frequency_order_and_cover_every_id(small):
    freqs = PreparedDataset(small).frequencies()
    for counts in freqs:
        for k in (1, 2, 3, 5):
            blocks = frequency_blocks(counts, k)
            assert 1 <= len(blocks) <= k
            _check_blocks(counts, blocks)
            ranges = blocks_to_ranges(blocks)
            assert sorted(i for r in ranges for i in block_ids(r)) == list(range(len(counts)))
            assert [block_size(r) for r in ranges] == [len(b) for b in blocks]


def test_reserved_ids_go_where_their_counts_place_them():
    # values 2.. descending; OOV rare -> last block; missing frequent -> head block
    counts = np.array([0, 500, 400, 300, 100, 50, 20, 10, 5])
    blocks = frequency_blocks(counts, 3)
    _check_blocks(counts, blocks)
    assert 0 in blocks[-1] and 1 in blocks[0]
    assert blocks_to_ranges(blocks)[0] == {"start": 0, "stop": 0, "reserved_ids": [1]}  # no values
    # no counts at all: equal id counts, reserved ids last
    assert frequency_blocks([0, 0, 0, 0], 2) == [[2, 3], [0, 1]]


def test_one_block_per_field_is_the_field_level_rule():
    counts = [np.array([0, 0, 50, 30, 20]), np.array([1, 0, 50, 20, 10, 9, 5, 3, 2, 0])]  # N = 100
    blocks = [frequency_blocks(c, 1) for c in counts]
    for alpha in (0.0, 0.3, 1.0):
        got = mde_block_dims(counts, blocks, alpha, 16)
        assert [d[0] for d in got] == mde_dims([5, 10], alpha, 16)


def _random_blocks(rng, vocab, k):
    counts = np.concatenate([rng.integers(0, 50, 2), -np.sort(-rng.integers(1, 100, vocab - 2))])
    return [{**r, "dim": int(rng.integers(1, 7))} for r in blocks_to_ranges(frequency_blocks(counts, k))]


@pytest.mark.parametrize("align", ["linear", "pad"])
def test_block_embedding_matches_a_naive_reference(align):
    rng = np.random.default_rng(0)
    vocab = [7, 30, 12]
    blocks = [_random_blocks(rng, v, 3) for v in vocab]
    emb = BlockFieldEmbedding(vocab, blocks, align=align, out_dim=8, bias=align == "linear")
    with torch.no_grad():  # move away from the identity / zero initialisation
        for p in emb.parameters():
            p.normal_()
    assert emb.embedding_params == sum(block_size(b) * b["dim"] for f in blocks for b in f)
    assert emb.kept_fields == [0, 1, 2] and emb.num_output_fields == 3 and emb.out_dim == 8
    ids = torch.stack([torch.from_numpy(rng.integers(0, v, 64)) for v in vocab], 1).to(torch.int32)
    out = emb(ids)
    assert out.shape == (64, 3, 8)
    tables = iter(range(len(emb.tables)))
    where = {}  # (field, id) -> (parameter index, row)
    for f, field in enumerate(blocks):
        for b in field:
            k = next(tables)
            for r, i in enumerate(block_ids(b)):
                where[f, i] = (k, r)
    for row in range(ids.shape[0]):
        for f in range(3):
            k, r = where[f, int(ids[row, f])]
            v = emb.tables[k][r]
            if align == "linear":
                ref = v @ emb.projections[k] + emb.biases[k]
            else:
                ref = torch.nn.functional.pad(v, (0, 8 - v.shape[0]))
            torch.testing.assert_close(out[row, f], ref)
    out.sum().backward()  # gradients reach every block that was read
    assert emb.tables[0].grad is not None


def test_block_embedding_rejects_bad_blocks():
    with pytest.raises(ValueError, match="exactly once"):
        BlockFieldEmbedding([5], [[{"start": 2, "stop": 5, "dim": 2}]])
    with pytest.raises(ValueError, match="dim >= 0"):
        BlockFieldEmbedding([3], [[{"start": 2, "stop": 3, "dim": -1, "reserved_ids": [0, 1]}]])
    with pytest.raises(ValueError, match="nothing to embed"):  # dim 0 everywhere (NIS: all dropped)
        BlockFieldEmbedding([3], [[{"start": 2, "stop": 3, "dim": 0, "reserved_ids": [0, 1]}]])


def _block_plan(schema, freqs):
    blocks = [[{**r, "dim": d} for r, d in zip(blocks_to_ranges(frequency_blocks(c, 2)), (6, 3),
                                                strict=False)] for c in freqs]
    return DimensionPlan(method="mde", field_names=schema.field_names, vocab_sizes=schema.vocab_sizes,
                         dims=[max(b["dim"] for b in f) for f in blocks], full_dim=8,
                         schema_hash=schema.content_hash,
                         value_dim_rule={"rule": "test", "per": "block", "blocks": blocks})


def test_plan_counts_blocks_and_round_trips(small, tmp_path):
    ds = PreparedDataset(small)
    plan = _block_plan(ds.schema, ds.frequencies())
    expected = sum(block_size(b) * b["dim"] for f in plan.value_dim_rule["blocks"] for b in f)
    assert plan.embedding_params == expected < sum(ds.schema.vocab_sizes) * 6
    model = build_model("deepfm", ds.schema, plan, options={"mlp": [8], "aligned_dim": 8})
    assert isinstance(model.embedding, BlockFieldEmbedding)
    assert model.embedding_params == plan.embedding_params
    assert model.embedding.alignment_params == sum(b["dim"] * 8 for f in plan.value_dim_rule["blocks"]
                                                   for b in f)
    ids = torch.from_numpy(np.stack([np.zeros(4, np.int32), np.ones(4, np.int32),
                                     np.full(4, 2, np.int32), np.full(4, 3, np.int32)], 1))
    assert model(ids).shape == (4,)
    plan.save(tmp_path / "plan.json")
    back = DimensionPlan.load(tmp_path / "plan.json")
    assert back == plan and back.embedding_params == plan.embedding_params
    assert json.loads((tmp_path / "plan.json").read_text())["embedding_params"] == expected


def test_mde_blocks_end_to_end(small, tmp_path):
    cfg = config_from_dict({"data": {"path": str(small)}, "model": {"name": "deepfm", "mlp": [16]},
                            "method": {"name": "mde", "blocks": 2, "temperatures": [0.0, 0.5],
                                       "base_dims": [4, 8]},
                            "train": {"batch_size": 500, "epochs": 1, "seed": 3, "threads": 1}})
    metrics = run_experiment(cfg, tmp_path / "run", quiet=True)
    plan = DimensionPlan.load(tmp_path / "run" / "plan.json")
    rule = plan.value_dim_rule
    assert rule["per"] == "block" and rule["num_blocks"] == 2
    freqs = PreparedDataset(small).frequencies()
    for counts, field, dim in zip(freqs, rule["blocks"], plan.dims, strict=True):
        assert 1 <= len(field) <= 2 and dim == max(b["dim"] for b in field)
        assert sorted(i for b in field for i in block_ids(b)) == list(range(len(counts)))
    expected = sum(block_size(b) * b["dim"] for f in rule["blocks"] for b in f)
    assert metrics["embedding_params"] == plan.embedding_params == expected
    trials = plan.extra["trials"]
    best = max(trials, key=lambda t: t["valid_auc"])
    assert rule["temperature"] == best["temperature"] and rule["base_dim"] == best["base_dim"]
    assert best["embedding_params"] == expected
    # alpha = 0: every block at base width; alpha = 0.5: some block narrower
    assert any(len({d for f in t["block_dims"] for d in f}) > 1 for t in trials)
