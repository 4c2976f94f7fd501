"""FieldEmbedding / FeaturesLinear: layout, exact parameter counts, alignment, dropped fields, dtypes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from embdim.nn.embedding import FeaturesLinear, FieldEmbedding
from embdim.plan import DimensionPlan

VOCAB = [5, 7, 3, 11]
MIXED = [2, 8, 0, 16]


def random_ids(vocab_sizes: list[int], batch: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, v, (batch,), generator=g) for v in vocab_sizes], 1)


def make_plan(dims: list[int], vocab: list[int] = VOCAB) -> DimensionPlan:
    return DimensionPlan("test", [f"f{i}" for i in range(len(vocab))], vocab, dims, full_dim=16)


def table_params(emb: FieldEmbedding) -> int:
    return sum(p.numel() for n, p in emb.named_parameters() if n.endswith("table.weight"))


def test_uniform_layout_is_one_table_with_offsets_and_no_alignment():
    emb = FieldEmbedding(VOCAB, [8] * 4)
    tables = [m for m in emb.modules() if isinstance(m, nn.Embedding)]
    assert len(tables) == 1 and tables[0].weight.shape == (sum(VOCAB), 8)
    assert emb.alignment_params == 0 and emb.uniform
    assert emb.embedding_params == sum(VOCAB) * 8 == sum(p.numel() for p in emb.parameters())
    ids = random_ids(VOCAB)
    offsets = torch.tensor([0, 5, 12, 15])
    torch.testing.assert_close(emb(ids), tables[0].weight[ids + offsets])


def test_mixed_layout_has_one_table_per_width_and_exact_param_count():
    plan = make_plan(MIXED)
    emb = FieldEmbedding.from_plan(plan)
    tables = [m for m in emb.modules() if isinstance(m, nn.Embedding)]
    assert sorted(t.embedding_dim for t in tables) == [2, 8, 16]
    assert emb.embedding_params == plan.embedding_params == table_params(emb) == 5 * 2 + 7 * 8 + 11 * 16
    assert emb.alignment_params == 2 * 16 + 8 * 16 + 16 * 16  # no bias by default
    assert emb.kept_fields == [0, 1, 3] and emb.num_output_fields == 3 and emb.out_dim == 16
    assert FieldEmbedding.from_plan(plan, bias=True).alignment_params == emb.alignment_params + 3 * 16


def test_fields_sharing_a_width_share_one_table():
    emb = FieldEmbedding([4, 5, 6, 7], [4, 8, 4, 8])
    assert sorted(t.num_embeddings for t in emb.modules() if isinstance(t, nn.Embedding)) == [10, 12]


@pytest.mark.parametrize("align", ["linear", "pad"])
@pytest.mark.parametrize("dims", [[8, 8, 8, 8], MIXED, [4, 0, 4, 4]])
def test_int32_and_int64_ids_give_identical_output(dims, align):
    emb = FieldEmbedding(VOCAB, dims, align=align, bias=True)
    ids = random_ids(VOCAB)
    out = emb(ids)
    assert out.shape == (32, sum(d > 0 for d in dims), max(dims)) and out.dtype == torch.float32
    assert torch.equal(out, emb(ids.int()))


@pytest.mark.parametrize("bias", [False, True])
def test_mixed_linear_matches_naive_per_field_reference(bias):
    vocab, dims = [6, 4, 9, 5, 8], [4, 2, 0, 4, 8]
    emb = FieldEmbedding(vocab, dims, align="linear", bias=bias)
    with torch.no_grad():  # random alignment so that the test does not rest on the identity init
        for p in emb.parameters():
            p.normal_()
    kept = [i for i, d in enumerate(dims) if d]
    tables = [nn.Embedding(vocab[i], dims[i]) for i in kept]
    projections = [nn.Linear(dims[i], 8, bias=bias) for i in kept]
    with torch.no_grad():
        for i, table, proj in zip(kept, tables, projections, strict=True):
            table.weight.copy_(emb.field_weight(i))
            weight, b = emb.field_alignment(i)
            proj.weight.copy_(weight.T)
            if bias:
                proj.bias.copy_(b)
    ids = random_ids(vocab, seed=3)
    expected = torch.stack([proj(table(ids[:, i]))
                            for i, table, proj in zip(kept, tables, projections, strict=True)], 1)
    torch.testing.assert_close(emb(ids), expected)


def test_linear_alignment_starts_as_zero_padding():
    ids = random_ids(VOCAB)
    linear, pad = FieldEmbedding(VOCAB, MIXED, align="linear"), FieldEmbedding(VOCAB, MIXED, align="pad")
    linear.load_state_dict(pad.state_dict(), strict=False)
    torch.testing.assert_close(linear(ids), pad(ids))


def test_pad_alignment_pads_with_zeros_and_has_no_parameters():
    emb = FieldEmbedding(VOCAB, MIXED, align="pad")
    assert emb.alignment_params == 0
    ids = random_ids(VOCAB)
    out = emb(ids)
    for k, field in enumerate(emb.kept_fields):
        d = MIXED[field]
        torch.testing.assert_close(out[:, k, :d], emb.field_weight(field)[ids[:, field]])
        assert torch.all(out[:, k, d:] == 0)


def test_pad_cannot_shrink_and_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="pad"):
        FieldEmbedding(VOCAB, MIXED, align="pad", out_dim=8)
    with pytest.raises(ValueError, match="align"):
        FieldEmbedding(VOCAB, MIXED, align="zeros")
    with pytest.raises(ValueError, match="dims"):
        FieldEmbedding(VOCAB, [8, 8])
    with pytest.raises(ValueError, match="nothing to embed"):
        FieldEmbedding(VOCAB, [0, 0, 0, 0])


def test_out_dim_below_max_width_projects_down():
    emb = FieldEmbedding(VOCAB, MIXED, out_dim=4)
    assert emb(random_ids(VOCAB)).shape == (32, 3, 4)


def test_dropped_field_ids_do_not_matter_and_have_no_rows():
    emb = FieldEmbedding(VOCAB, MIXED)
    ids = random_ids(VOCAB)
    other = ids.clone()
    other[:, 2] = (other[:, 2] + 1) % VOCAB[2]
    assert torch.equal(emb(ids), emb(other))
    assert sum(t.num_embeddings for t in emb.modules() if isinstance(t, nn.Embedding)) == 5 + 7 + 11
    with pytest.raises(KeyError):
        emb.field_weight(2)


def test_gradients_reach_every_table():
    emb = FieldEmbedding(VOCAB, MIXED)
    emb(random_ids(VOCAB)).square().sum().backward()
    for name, p in emb.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_state_dict_round_trip_gives_the_same_output():
    a, b = FieldEmbedding(VOCAB, MIXED, bias=True), FieldEmbedding(VOCAB, MIXED, bias=True)
    b.load_state_dict(a.state_dict())
    ids = random_ids(VOCAB)
    assert torch.equal(a(ids), b(ids))
    assert all("table" in k or k.endswith(("weight", "bias")) for k in a.state_dict())  # no buffers


def test_features_linear_matches_naive_sum_and_skips_dropped_fields():
    lin = FeaturesLinear(VOCAB, kept_fields=[0, 1, 3])
    assert lin.weight.num_embeddings == 5 + 7 + 11
    with torch.no_grad():
        lin.weight.weight.normal_()
        lin.bias.fill_(0.5)
    ids = random_ids(VOCAB)
    rows = lin.weight.weight[:, 0]
    expected = rows[ids[:, 0]] + rows[5 + ids[:, 1]] + rows[12 + ids[:, 3]] + 0.5
    torch.testing.assert_close(lin(ids), expected)
    assert torch.equal(lin(ids), lin(ids.int()))
    other = ids.clone()
    other[:, 2] = (other[:, 2] + 1) % VOCAB[2]
    assert torch.equal(lin(ids), lin(other))
