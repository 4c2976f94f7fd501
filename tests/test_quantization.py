"""DPQ and MGQE: code assignment (VQ nearest centroid, SX argmax with straight-through gradients),
inference from the stored codes, the parameter count, MGQE's frequency tiers, the VQ codebook
loss reaching the trainer, exact resume, and `embdim run` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embdim.cli import main
from embdim.config import config_from_dict
from embdim.errors import ConfigError
from embdim.nn.models import build_model
from embdim.nn.quantized_embedding import ProductQuantizedEmbedding, quantized_params
from embdim.plan import DimensionPlan
from embdim.search import make_method
from embdim.search.quantization import frequency_tiers
from embdim.train.trainer import Trainer


def _cfg(path, method, model="deepfm", epochs=1, **train):
    return config_from_dict({"data": {"path": str(path)}, "model": {"name": model, "mlp": [16]},
                             "method": method,
                             "train": {"batch_size": 500, "epochs": epochs, "seed": 3, "threads": 1,
                                       **train}})


def _module(variant, **kw):
    torch.manual_seed(0)
    m = ProductQuantizedEmbedding([7, 5], 6, 3, 8, variant=variant, batch_norm=False, **kw)
    with torch.no_grad():  # well-separated centroids and queries (the library's init is tiny)
        m.query.normal_()
        m.keys.normal_()
        if m.values is not m.keys:
            m.values.normal_()
    return m


IDS = torch.tensor([[0, 1], [3, 4], [6, 2], [2, 0]])


def _groups(m, ids):
    """The queries of ids ``[B, F]`` cut into groups: ``[B, F, D, s]``."""
    return m.query[ids + m.offsets].view(*ids.shape, m.num_groups, m.sub_dim)


def _value(m, f, j, k):
    return m.values[m.field_set[f], 0 if m.share_centroids else j, k]


# ---- code assignment ------------------------------------------------------------------------
@pytest.mark.parametrize("codebooks", ["shared", "per_field"])
def test_vq_picks_the_nearest_centroid_and_passes_the_gradient_to_the_query(codebooks):
    m = _module("vq", codebooks=codebooks).train()
    out = m(IDS)
    q = _groups(m, IDS)
    for b in range(IDS.shape[0]):
        for f in range(2):
            for j in range(m.num_groups):
                keys = m.keys[m.field_set[f], j]  # [K, s]
                nearest = int(((keys - q[b, f, j]) ** 2).sum(-1).argmin())
                torch.testing.assert_close(out[b, f, j * 2:(j + 1) * 2], _value(m, f, j, nearest))
    out.sum().backward()
    # straight-through: the query gets the output's gradient (ones), the centroids none from it
    used = (IDS + m.offsets).flatten()
    assert torch.equal(m.query.grad[used], torch.ones(8, 6))
    assert float(m.query.grad.sum()) == 48
    assert m.keys.grad is None or float(m.keys.grad.abs().sum()) == 0
    loss = m.pop_auxiliary_loss()  # ... they learn from the codebook loss instead
    assert loss is not None and m.pop_auxiliary_loss() is None
    loss.backward()
    assert float(m.keys.grad.abs().sum()) > 0


@pytest.mark.parametrize("share", [False, True])
def test_sx_forward_is_the_argmax_code_and_gradients_reach_query_keys_and_values(share):
    m = _module("sx", share_centroids=share).train()
    out = m(IDS)
    q = _groups(m, IDS)
    for b in range(IDS.shape[0]):
        for f in range(2):
            for j in range(m.num_groups):
                keys = m.keys[0, 0 if share else j]
                best = int((keys @ q[b, f, j]).argmax())
                torch.testing.assert_close(out[b, f, j * 2:(j + 1) * 2], _value(m, f, j, best))
    assert m.pop_auxiliary_loss() is None  # beta = 0: no regulariser
    (out ** 2).sum().backward()
    for p in (m.query, m.keys, m.values):  # the softmax carries the gradient to query and keys
        assert float(p.grad.abs().sum()) > 0


def test_batch_norm_normalises_the_responses_before_the_argmax():
    m = _module("sx")
    m.bn = torch.nn.BatchNorm1d(m.num_centroids, eps=1e-3, affine=False).train()
    ids = torch.randint(0, 5, (64, 2))
    resp = m.responses(m.query[ids + m.offsets], m.field_index, ids + m.offsets)
    raw = torch.einsum("bfds,dks->bfdk", _groups(m, ids), m.keys[0])
    flat = raw.reshape(-1, m.num_centroids)
    expected = (flat - flat.mean(0)) / torch.sqrt(flat.var(0, unbiased=False) + 1e-3)
    torch.testing.assert_close(resp.reshape(-1, m.num_centroids), expected, rtol=1e-4, atol=1e-4)


def test_evaluation_is_the_codebook_lookup_of_the_stored_codes():
    m = _module("sx", codebooks="per_field")
    m.bn = torch.nn.BatchNorm1d(m.num_centroids, eps=1e-3, affine=False)
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    for _ in range(5):  # the weights and the batch-norm statistics move
        m.train()
        m(torch.randint(0, 5, (32, 2))).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    m.eval()  # fixes the codes: argmax of the responses under the running statistics
    ids = torch.cartesian_prod(torch.arange(5), torch.arange(5))
    rows = ids + m.offsets
    assert torch.equal(m.codes[rows], m.responses(m.query[rows], m.field_index, rows).argmax(-1))
    stored = m.compressed()  # what serving keeps: codes + value codebooks, no query table
    assert stored["codes"].dtype == torch.uint8
    codes = stored["codes"].long()[rows]  # [B, F, D]
    expected = torch.stack([torch.cat([stored["values"][f, j, codes[b, f, j]] for j in range(3)])
                            for b in range(len(ids)) for f in range(2)]).view(len(ids), 2, 6)
    with torch.no_grad():
        m.query.zero_()  # the evaluation forward does not read the query table
    torch.testing.assert_close(m(ids), expected, rtol=0, atol=0)


# ---- parameter accounting -------------------------------------------------------------------
def test_parameter_count_is_codebooks_plus_code_bits_in_32_bit_words():
    # 128 ids, d = 16, D = 4 groups of 4, K = 32 (5 bits): 4 * 32 * 4 floats + 128 * 4 * 5 / 32
    assert quantized_params([100, 28], 16, 4, 32)["embedding_params"] == 512 + 80
    # one codebook for the 4 groups, per field: 2 * 32 * 4 floats; K = 33 needs 6 bits (ceil)
    size = quantized_params([100, 28], 16, 4, 33, codebooks="per_field", share_centroids=True)
    assert size["embedding_params"] == 2 * 33 * 4 + 128 * 4 * 6 // 32
    # MGQE: 10 ids with 8-bit codes and 118 with 6-bit codes, per-field codebooks of 256
    tiers = [[(10, 256), (90, 64)], [(28, 64)]]
    size = quantized_params([100, 28], 16, 4, 256, tiers, codebooks="per_field")
    assert size["embedding_params"] == 2 * 4 * 256 * 4 + (10 * 4 * 8 + 118 * 4 * 6 + 31) // 32
    m = ProductQuantizedEmbedding([100, 28], 16, 4, 32)
    assert m.embedding_params == 592  # the module counts what the plan counts


def test_plan_records_the_count_and_the_model_has_the_same(small):
    from embdim.data.dataset import PreparedDataset

    ds = PreparedDataset(small)
    plan = make_method({"name": "dpq"}).search(ds)
    v, d = sum(ds.schema.vocab_sizes), 32
    assert plan.embedding["embedding_params"] == 8 * 32 * 4 + -(-v * 8 * 5 // 32)
    assert plan.embedding["training_params"] == v * d + 2 * 8 * 32 * 4  # SX: query + keys + values
    assert "query table" in plan.embedding["params_note"]
    model = build_model("deepfm", ds.schema, plan)
    assert model.embedding_params == plan.embedding_params
    plan.embedding["embedding_params"] += 1  # a plan whose count does not match is refused
    with pytest.raises(ValueError, match="counts"):
        build_model("deepfm", ds.schema, plan)


# ---- MGQE tiers -----------------------------------------------------------------------------
def test_frequency_tiers_put_the_most_frequent_tenth_in_the_first_tier():
    counts = np.array([5000, 0, *range(1000, 980, -1)])  # OOV most frequent, "missing" never seen
    tiers = frequency_tiers(counts, [0.1], [256, 64])  # 22 ids: ceil(2.2) = 3 in the first tier
    assert tiers == [{"start": 2, "stop": 4, "reserved_ids": [0], "num_centroids": 256},
                     {"start": 4, "stop": 22, "reserved_ids": [1], "num_centroids": 64}]
    tiers = frequency_tiers(counts, [0.1, 0.5], [256, 64, 16])  # then ceil(11) = 11, the rest 8
    assert [(t["start"], t["stop"], t["num_centroids"]) for t in tiers] == [
        (2, 4, 256), (4, 15, 64), (15, 22, 16)]


def test_mgqe_rare_ids_use_only_their_tiers_centroids():
    limit = torch.tensor([16] * 3 + [4] * 7)  # ids 0-2 frequent (all 16), 3-9 rare (first 4)
    m = ProductQuantizedEmbedding([10], 4, 2, 16, variant="vq", row_centroids=limit,
                                  batch_norm=False)
    with torch.no_grad():  # every query sits on centroid 12 of its group: outside the rare tier
        m.keys.copy_(torch.randn(1, 2, 16, 2))
        m.query.copy_(m.keys[0, :, 12].reshape(1, 4).expand(10, 4))
    ids = torch.arange(10)[:, None]
    m.train()(ids)
    m.eval()
    codes = m.codes
    assert (codes[:3] == 12).all()  # frequent ids may use every centroid
    assert (codes[3:] < 4).all()  # rare ids only their tier's
    nearest_allowed = ((m.keys[0, :, :4] - m.keys[0, :, 12:13]) ** 2).sum(-1).argmin(-1)
    assert torch.equal(codes[3], nearest_allowed)


def test_mgqe_plan_has_tiers_and_its_bits_follow_them(small):
    from embdim.data.dataset import PreparedDataset

    ds = PreparedDataset(small)
    plan = make_method({"name": "mgqe"}).search(ds)
    tiers = plan.embedding["tiers"]
    assert len(tiers) == ds.schema.num_fields
    bits = 0
    for vocab, field in zip(ds.schema.vocab_sizes, tiers, strict=True):
        sizes = [t["stop"] - t["start"] + len(t.get("reserved_ids", [])) for t in field]
        assert sum(sizes) == vocab and sizes[0] == -(-vocab // 10)
        bits += sum(n * 4 * (8 if t["num_centroids"] == 256 else 6)
                    for n, t in zip(sizes, field, strict=True))
    books = ds.schema.num_fields * 4 * 256 * 8
    assert plan.embedding_params == books + -(-bits // 32)
    model = build_model("fm", ds.schema, plan)
    assert model.embedding_params == plan.embedding_params


# ---- options --------------------------------------------------------------------------------
@pytest.mark.parametrize("method, message", [
    ({"name": "dpq", "num_groups": 5}, "must divide"),
    ({"name": "dpq", "variant": "gumbel"}, "variant"),
    ({"name": "dpq", "num_centroids": 1}, ">= 2"),
    ({"name": "dpq", "codebooks": "per_row"}, "codebooks"),
    ({"name": "mgqe", "num_centroids": [64, 256]}, "non-increasing"),
    ({"name": "mgqe", "tier_fractions": [0.1, 0.2]}, "one share per tier"),
    ({"name": "mgqe", "tier_fractions": [1.5]}, "sum below 1"),
])
def test_bad_options_are_one_clear_error(method, message):
    with pytest.raises(ConfigError, match=message):
        make_method(method)


# ---- training -------------------------------------------------------------------------------
def test_trainer_adds_the_vq_codebook_loss(small):
    """Without the codebook loss, VQ's centroids would never move (the output's gradient goes to
    the query only)."""
    from embdim.data.dataset import PreparedDataset

    cfg = _cfg(small, {"name": "dpq", "variant": "vq"})
    ds = PreparedDataset(small)
    plan = make_method(cfg.method).search(ds)
    model = build_model("deepfm", ds.schema, plan, options=cfg.model)
    before = model.embedding.keys.detach().clone()
    Trainer(model, ds, cfg.train, quiet=True).train_epoch(0)
    assert float((model.embedding.keys.detach() - before).abs().max()) > 0


def test_resume_gives_exactly_the_uninterrupted_metrics(small, interrupt_and_resume):
    cfg = _cfg(small, {"name": "mgqe", "num_centroids": [16, 4]}, epochs=3, early_stop=0)
    full, resumed = interrupt_and_resume(cfg)
    assert resumed["test_auc"] == full["test_auc"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]


@pytest.mark.parametrize("method, model", [("dpq", "deepfm"), ("mgqe", "autoint"), ("dpq", "lr")])
def test_embdim_run_end_to_end(small, tmp_path, method, model):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"data": {"path": str(small)},
                               "model": {"name": model, "mlp": [16]}, "method": {"name": method},
                               "train": {"batch_size": 500, "epochs": 2, "seed": 1, "threads": 1}}))
    assert main(["--quiet", "run", str(cfg), "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    plan = DimensionPlan.load(tmp_path / "run" / "plan.json")
    assert plan.embedding["kind"] == method and 0.5 < metrics["test_auc"] <= 1
    if model == "lr":  # no embedding at all
        assert metrics["embedding_params"] == 0
    else:
        assert metrics["embedding_params"] == plan.embedding_params
        if method == "dpq":  # MGQE's per-field codebooks of 256 outweigh these tiny vocabularies
            assert metrics["embedding_params"] < metrics["fde_embedding_params"] / 4
        assert "code bits" in metrics["embedding_params_note"]
        # the best checkpoint holds the compressed model: the codes the test AUC was computed with
        state = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
        codes = state["model"]["embedding.codes"]
        assert codes.shape == (sum(plan.vocab_sizes), plan.embedding["num_groups"])
        assert not bool(state["model"]["embedding.codes_stale"])
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "report")]) == 0
    assert method in (tmp_path / "report" / "report.md").read_text()
