"""Base models, interaction blocks, ModelOptions and build_model."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from embdim.data.schema import FieldSpec, Schema
from embdim.errors import ConfigError, SchemaMismatchError
from embdim.nn import (
    MODEL_NAMES,
    BiInteraction,
    FactorizationMachine,
    FieldEmbedding,
    InnerProduct,
    ModelOptions,
    SelfAttentionLayer,
    build_model,
)
from embdim.plan import DimensionPlan

VOCAB = [5, 7, 3, 11]
SMALL = {"mlp": [16, 8], "attention_layers": 2, "attention_dim": 4}
PLANS = {"uniform": [8, 8, 8, 8], "mixed": [2, 8, 0, 16]}


def random_ids(vocab_sizes: list[int] = VOCAB, batch: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, v, (batch,), generator=g) for v in vocab_sizes], 1)


def make_plan(dims: list[int], vocab: list[int] = VOCAB) -> DimensionPlan:
    return DimensionPlan("test", [f"f{i}" for i in range(len(vocab))], vocab, dims, full_dim=16)


def embedding_tables(model: nn.Module) -> list[nn.Embedding]:
    return [m for m in model.embedding.modules() if isinstance(m, nn.Embedding)] if model.embedding else []


CASES = [(name, plan, align) for name, plan, align in itertools.product(MODEL_NAMES, PLANS, ["linear", "pad"])
         if not (plan == "uniform" and align == "pad")]


@pytest.mark.parametrize(("name", "plan_name", "align"), CASES)
def test_model_forward_backward(name, plan_name, align):
    plan = make_plan(PLANS[plan_name])
    model = build_model(name, VOCAB, plan, options={**SMALL, "align": align})
    ids = random_ids()
    logits = model(ids)
    assert logits.shape == (16,) and torch.isfinite(logits).all()
    F.binary_cross_entropy_with_logits(logits, torch.rand(16).round()).backward()
    for table in embedding_tables(model):
        assert table.weight.grad is not None and table.weight.grad.abs().sum() > 0
    if model.linear is not None:
        assert model.linear.weight.weight.grad.abs().sum() > 0

    # Exact parameter accounting: the tables hold exactly what the plan counts.
    expected = 0 if name == "lr" else plan.embedding_params
    assert model.embedding_params == expected == sum(t.weight.numel() for t in embedding_tables(model))

    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids), model(ids.int()))
        if plan_name == "mixed":  # field 2 is dropped: its ids change nothing, nothing has its rows
            other = ids.clone()
            other[:, 2] = (other[:, 2] + 1) % VOCAB[2]
            assert torch.equal(model(ids), model(other))
            kept_rows = 5 + 7 + 11
            assert all(t.num_embeddings <= kept_rows for t in embedding_tables(model))
            assert sum(t.num_embeddings for t in embedding_tables(model)) in (0, kept_rows)
            if model.linear is not None:
                assert model.linear.weight.num_embeddings == kept_rows


def test_lr_has_no_embedding_and_ignores_widths():
    a = build_model("lr", VOCAB, make_plan([2, 8, 4, 16]))
    b = build_model("lr", VOCAB, make_plan([16, 16, 16, 16]))
    assert a.embedding is None and a.embedding_params == 0
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters()) == sum(VOCAB) + 1
    with pytest.raises(ConfigError, match="no embedding"):
        build_model("lr", VOCAB, embedding=FieldEmbedding(VOCAB, [4] * 4))


def test_aligned_dim_option_sets_the_common_width():
    model = build_model("deepfm", VOCAB, make_plan([2, 8, 0, 16]), options={"aligned_dim": 32})
    assert model.embedding.out_dim == 32 and model.body.mlp[0].in_features == 3 * 32
    assert model(random_ids()).shape == (16,)


def test_no_plan_gives_every_field_dim_and_one_table():
    model = build_model("deepfm", VOCAB, dim=4)
    assert len(embedding_tables(model)) == 1 and model.embedding_params == sum(VOCAB) * 4
    assert model.embedding.out_dim == 4 and model.kept_fields == [0, 1, 2, 3]


def test_model_aliases_and_unknown_name():
    assert build_model("wd", VOCAB).name == "widedeep"
    assert build_model("Wide_Deep", VOCAB).name == "widedeep"
    assert build_model("wide-deep", VOCAB).name == "widedeep"
    with pytest.raises(ConfigError, match=r"unknown model 'xdeepfm'.*deepfm.*autoint"):
        build_model("xdeepfm", VOCAB)


def test_model_options_reject_unknown_keys_naming_the_valid_ones():
    with pytest.raises(ConfigError, match=r"'hidden'.*valid options: name, mlp, dropout"):
        ModelOptions.from_dict({"name": "deepfm", "hidden": [64]})
    with pytest.raises(ConfigError, match="unknown model option"):
        build_model("deepfm", VOCAB, options={"mlp_dims": [8]})
    with pytest.raises(ConfigError, match="dropout"):
        ModelOptions(dropout=1.5)
    with pytest.raises(ConfigError, match="align"):
        ModelOptions(align="zeros")
    with pytest.raises(ConfigError, match="options for model"):
        build_model("fm", VOCAB, options=ModelOptions(name="deepfm"))
    opts = ModelOptions.from_dict({"name": "nfm", "mlp": (64,), "bi_dropout": 0.1})
    assert opts.mlp == [64] and ModelOptions.from_dict(opts.to_dict()) == opts


def test_mlp_options_shape_the_mlp():
    model = build_model("widedeep", VOCAB, dim=4, options={"mlp": [32], "dropout": 0.0, "batch_norm": False})
    kinds = [type(m).__name__ for m in model.body.mlp]
    assert kinds == ["Linear", "ReLU", "Linear"]
    assert model.body.mlp[0].in_features == 4 * 4
    default = build_model("deepfm", VOCAB, dim=4)
    kinds = [type(m).__name__ for m in default.body.mlp]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Dropout"] * 2 + ["Linear"]
    assert default.body.mlp[0].out_features == 128 and default.body.mlp[3].p == 0.2


def test_plan_is_checked_against_the_schema_and_vocab():
    fields = [FieldSpec(f"f{i}", "categorical", v) for i, v in enumerate(VOCAB)]
    schema = Schema(label="y", fields=fields, splits={"train": 10}, options={}, content_hash="abc")
    plan = make_plan([4, 4, 0, 4])
    assert build_model("fm", schema, plan).embedding.num_output_fields == 3
    with pytest.raises(SchemaMismatchError, match="hash"):
        build_model("fm", schema, DimensionPlan("t", plan.field_names, VOCAB, [4] * 4, 4, schema_hash="zzz"))
    with pytest.raises(SchemaMismatchError, match="vocabulary"):
        build_model("fm", [5, 7, 3, 12], plan)


def test_a_swapped_in_embedding_sizes_the_body():
    class Supernet(nn.Module):  # any module with the embedding attributes, e.g. a search supernet
        kept_fields, num_output_fields, out_dim, embedding_params = [0, 1, 2, 3], 4, 6, 123

        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(sum(VOCAB), 6)

        def forward(self, ids):
            return self.table(ids + torch.tensor([0, 5, 12, 15]))

    for name in MODEL_NAMES[1:]:
        model = build_model(name, VOCAB, options=SMALL, embedding=Supernet())
        assert model(random_ids()).shape == (16,) and model.embedding_params == 123


# ---- interaction blocks against naive definitions ----------------------------------------------
def test_factorization_machine_equals_naive_double_sum():
    x = torch.randn(6, 5, 3, dtype=torch.float64)
    naive = sum((x[:, i] * x[:, j]).sum(1) for i in range(5) for j in range(i + 1, 5))
    torch.testing.assert_close(FactorizationMachine()(x), naive)
    naive_bi = sum(x[:, i] * x[:, j] for i in range(5) for j in range(i + 1, 5))
    torch.testing.assert_close(BiInteraction()(x), naive_bi)


def test_inner_product_equals_naive_pairs():
    x = torch.randn(6, 5, 3, dtype=torch.float64)
    layer = InnerProduct(5)
    naive = torch.stack([(x[:, i] * x[:, j]).sum(1) for i in range(5) for j in range(i + 1, 5)], 1)
    assert layer.num_pairs == 10
    torch.testing.assert_close(layer(x), naive)


@pytest.mark.parametrize("scaled", [False, True])
def test_self_attention_equals_naive_per_head(scaled):
    torch.manual_seed(0)
    layer = SelfAttentionLayer(in_dim=4, att_dim=3, heads=2, residual=True, scaled=scaled).double()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    wq, wk, wv = layer.qkv.weight.view(3, 2, 3, 4)  # [qkv, head, att_dim, in_dim]
    heads = []
    for h in range(2):
        q, k, v = x @ wq[h].T, x @ wk[h].T, x @ wv[h].T
        scores = q @ k.transpose(1, 2) / (3 ** 0.5 if scaled else 1.0)
        heads.append(scores.softmax(-1) @ v)
    naive = torch.relu(torch.cat(heads, -1) + x @ layer.res.weight.T)
    torch.testing.assert_close(layer(x), naive)


@pytest.mark.parametrize("dims", [[4, 4, 4], [2, 4, 0]])
def test_fm_learns_a_planted_interaction(dims):
    """The default initialisation (and alignment) lets FM pick up pure pairwise signal quickly."""
    torch.manual_seed(0)
    vocab, n, batch = [20, 20, 20], 4000, 256
    ids = random_ids(vocab, batch=n, seed=1)
    y = ((ids[:, 0] % 2) == (ids[:, 1] % 2)).float()  # XOR-like: no first-order signal at all
    model = build_model("fm", vocab, make_plan(dims, vocab))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(100):
        rows = slice(step * batch % (n - batch), step * batch % (n - batch) + batch)
        loss = F.binary_cross_entropy_with_logits(model(ids[rows]), y[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = ((model(ids) > 0).float() == y).float().mean()
    assert accuracy > 0.95
