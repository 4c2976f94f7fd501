"""TorchRec export: tables of a plan (widths rounded up to multiples of 4, dropped fields left out),
trained weights of a run as an EmbeddingBagCollection state dict, the `embdim export` command, and,
where TorchRec imports, the real EmbeddingBagConfigs / EmbeddingBagCollection / FBGEMM kernels.

The TorchRec tests skip when TorchRec is not installed, except with EMBDIM_REQUIRE_TORCHREC=1 (CI,
which installs it: .ci/run), where they fail instead.
"""

import json
import sys

import pytest
import torch

from embdim.cli import main
from embdim.data import PreparedDataset
from embdim.errors import EmbdimError, SchemaMismatchError
from embdim.experiment import run_experiment
from embdim.export.torchrec import (
    TorchRecExport,
    export_weights,
    load_configs,
    load_weights,
    round_up,
    table_name,
    torchrec_export,
)
from embdim.nn.models import build_model
from embdim.plan import DimensionPlan

# Importing TorchRec makes FBGEMM warn about its own optional (SSD) kernels and module layout.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:fbgemm_gpu")


def _plan(dims, names=("a", "b", "c", "d", "e"), vocab=(10, 20, 30, 40, 50)):
    n = len(dims)
    return DimensionPlan(method="test", field_names=list(names[:n]), vocab_sizes=list(vocab[:n]),
                         dims=list(dims), full_dim=8)


# ---- pure Python: no torchrec needed -----------------------------------------------------------
def test_round_up():
    assert [round_up(d, 4) for d in (1, 2, 3, 4, 5, 8, 9)] == [4, 4, 4, 4, 8, 8, 12]
    assert [round_up(d, 1) for d in (1, 3, 7)] == [1, 3, 7]
    with pytest.raises(EmbdimError, match="round_to"):
        round_up(3, 0)


def test_tables_round_widths_up_and_leave_out_dropped_fields():
    plan = _plan([0, 3, 4, 6, 1])
    exp = torchrec_export(plan)
    assert [t.feature for t in exp.tables] == ["b", "c", "d", "e"]  # a: dim 0, no table
    assert exp.dropped_fields == ["a"]
    assert [t.searched_dim for t in exp.tables] == [3, 4, 6, 1]
    assert [t.embedding_dim for t in exp.tables] == [4, 4, 8, 4]
    assert [t.num_embeddings for t in exp.tables] == [20, 30, 40, 50]  # the vocab sizes
    assert [t.field_index for t in exp.tables] == [1, 2, 3, 4]
    assert exp.plan_embedding_params == plan.embedding_params == 20 * 3 + 30 * 4 + 40 * 6 + 50
    assert exp.embedding_params == 20 * 4 + 30 * 4 + 40 * 8 + 50 * 4
    exact = torchrec_export(plan, round_to=1)
    assert [t.embedding_dim for t in exact.tables] == [3, 4, 6, 1]
    assert exact.embedding_params == plan.embedding_params
    assert [t.embedding_dim for t in torchrec_export(plan, round_to=8).tables] == [8, 8, 8, 8]


def test_table_names_are_module_safe_and_unique():
    assert table_name("user.age") == "t_user_age"
    plan = _plan([2, 2, 2], names=("user.age", "user_age", "x y"))
    names = [t.name for t in torchrec_export(plan).tables]
    assert len(set(names)) == 3 and all(n.replace("_", "").isalnum() for n in names)
    assert [t.feature for t in torchrec_export(plan).tables] == ["user.age", "user_age", "x y"]


def test_export_json_round_trip_and_refusals(tmp_path):
    exp = torchrec_export(_plan([0, 3, 8]))
    exp.save(tmp_path / "t.json")
    assert TorchRecExport.load(tmp_path / "t.json") == exp
    d = json.loads((tmp_path / "t.json").read_text())
    assert d["tables"][0]["feature_names"] == ["b"] and d["pooling"] == "SUM"
    (tmp_path / "bad.json").write_text(json.dumps({**d, "format": "other"}))
    with pytest.raises(EmbdimError, match="not an embdim TorchRec export"):
        TorchRecExport.load(tmp_path / "bad.json")
    with pytest.raises(EmbdimError, match="not found"):
        TorchRecExport.load(tmp_path / "missing.json")


def test_plan_is_checked_against_the_schema(small):
    schema = PreparedDataset(small).schema
    plan = DimensionPlan.uniform(schema, 4)
    assert len(torchrec_export(plan, schema).tables) == schema.num_fields
    plan.vocab_sizes = [v + 1 for v in plan.vocab_sizes]
    with pytest.raises(SchemaMismatchError, match="vocabulary sizes differ"):
        torchrec_export(plan, schema)


def test_missing_torchrec_is_a_message_with_the_install_recipe(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchrec", None)  # `import torchrec` raises ImportError
    with pytest.raises(EmbdimError, match=r"embdim\[torchrec\].*--no-deps torchrec"):
        _plan([2, 4]).to_torchrec()


# ---- trained weights (torch only) ---------------------------------------------------------------
@pytest.fixture(scope="module", params=["linear", "pad", "scatter"])
def run(request, small, tmp_path_factory):
    """A 1-epoch FM run of a hand-made plan: field f0 dropped, widths 3, 2, 6 (aligned to 8; with
    ``scatter`` the columns sit at the plan's kept_indices, as SSEDS places them)."""
    work = tmp_path_factory.mktemp(f"torchrec-{request.param}")
    schema = PreparedDataset(small).schema
    kept = [[], [1, 4, 6], [0, 7], [0, 1, 2, 3, 5, 6]] if request.param == "scatter" else None
    plan = DimensionPlan(method="hand", field_names=schema.field_names, vocab_sizes=schema.vocab_sizes,
                         dims=[0, 3, 2, 6], full_dim=8, schema_hash=schema.content_hash,
                         kept_indices=kept)
    plan.save(work / "plan.json")
    model = {"name": "fm", "align": request.param, "aligned_dim": 8,
             "align_bias": request.param == "linear"}
    cfg = {"data": {"path": str(small)}, "model": model,
           "method": {"name": "plan", "path": str(work / "plan.json")},
           "train": {"epochs": 1, "batch_size": 1000}}
    run_experiment(cfg, work / "run", quiet=True)
    return work / "run", cfg


def _trained_model(run_dir, cfg):
    schema = PreparedDataset(cfg["data"]["path"]).schema
    plan = DimensionPlan.load(run_dir / "plan.json")
    model = build_model("fm", schema, plan, options=cfg["model"])
    model.load_state_dict(torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["model"])
    return model.eval(), plan


def test_weights_are_the_trained_rows_zero_padded(run):
    run_dir, cfg = run
    model, plan = _trained_model(run_dir, cfg)
    w = export_weights(run_dir)
    assert set(w["state_dict"]) == {"embedding_bags.t_f1.weight", "embedding_bags.t_f2.weight",
                                    "embedding_bags.t_f3.weight"}
    for i, (name, width) in zip([1, 2, 3], [("t_f1", 4), ("t_f2", 4), ("t_f3", 8)], strict=True):
        t = w["state_dict"][f"embedding_bags.{name}.weight"]
        d = plan.dims[i]
        assert t.shape == (plan.vocab_sizes[i], width)
        assert torch.equal(t[:, :d], model.embedding.field_weight(i).detach())
        assert not t[:, d:].any()  # the rounded columns are zero
    if cfg["model"]["align"] == "linear":
        assert w["out_dim"] == 8 and set(w["alignment"]) == {"f1", "f2", "f3"}
        a = w["alignment"]["f1"]
        assert a["weight"].shape == (4, 8) and not a["weight"][3:].any() and a["bias"].shape == (8,)
    elif cfg["model"]["align"] == "scatter":  # the fixed placement, as a one-hot W_i without bias
        assert w["out_dim"] == 8 and set(w["alignment"]) == {"f1", "f2", "f3"}
        a = w["alignment"]["f1"]
        assert "bias" not in a and torch.equal(a["weight"][:3], torch.eye(8)[[1, 4, 6]])
        assert not a["weight"][3:].any()
    else:
        assert w["alignment"] == {} and w["out_dim"] is None


def test_rows_and_alignment_reproduce_the_model_embeddings(run):
    """pooled row (one id per bag) @ W_i + b_i == the trained model's aligned field embedding."""
    run_dir, cfg = run
    model, plan = _trained_model(run_dir, cfg)
    w = export_weights(run_dir)
    ids = torch.from_numpy(PreparedDataset(cfg["data"]["path"]).split("test").x[:64].copy())
    with torch.no_grad():
        want = model.embedding(ids)  # [B, 3 kept fields, 8]
    exp = torchrec_export(plan)
    for k, t in enumerate(exp.tables):
        rows = w["state_dict"][f"embedding_bags.{t.name}.weight"][ids[:, t.field_index].long()]
        a = w["alignment"].get(t.feature)
        pad = torch.nn.functional.pad
        got = rows @ a["weight"] + a.get("bias", 0) if a else pad(rows, (0, 8 - rows.shape[1]))
        torch.testing.assert_close(got, want[:, k])


def test_weights_refuse_other_plans(run, tmp_path):
    run_dir, _ = run
    plan = DimensionPlan.load(run_dir / "plan.json")
    other = DimensionPlan.from_dict({**plan.to_dict(), "fields": [
        {**{k: v for k, v in f.items() if k != "kept_indices"}, "dim": 4}
        for f in plan.to_dict()["fields"]]})
    with pytest.raises(SchemaMismatchError, match="trained with dims"):
        export_weights(run_dir, plan=other)
    blocks = [[{"start": 2, "stop": v, "dim": d, "reserved_ids": [0, 1]}]
              for v, d in zip(plan.vocab_sizes, plan.dims, strict=True)]
    blocky = DimensionPlan.from_dict({**plan.to_dict(), "value_dim_rule": {"blocks": blocks}})
    with pytest.raises(EmbdimError, match="per-frequency-block"):
        export_weights(run_dir, plan=blocky)
    with pytest.raises(EmbdimError, match="no checkpoints/best.pt"):
        export_weights(tmp_path, plan=plan)


def test_cli_export(run, tmp_path, capsys):
    run_dir, cfg = run
    out = tmp_path / "tables.json"
    assert main(["export", str(run_dir), "--format", "torchrec", "--out", str(out), "--weights"]) == 0
    printed = capsys.readouterr().out
    assert "t_f3: 52 x 8 (searched 6)" in printed and "dropped fields (width 0, no table): f0" in printed
    exp = TorchRecExport.load(out)
    assert exp.weights == "tables.pt" and exp.dropped_fields == ["f0"]
    assert [t.embedding_dim for t in exp.tables] == [4, 4, 8]
    weights = load_weights(tmp_path / "tables.pt")
    torch.testing.assert_close(weights["state_dict"], export_weights(run_dir)["state_dict"])
    # a plan file, exact widths
    assert main(["export", str(run_dir / "plan.json"), "--out", str(tmp_path / "p.json"),
                 "--round-to", "1", "--data", cfg["data"]["path"]]) == 0
    assert [t.embedding_dim for t in TorchRecExport.load(tmp_path / "p.json").tables] == [3, 2, 6]
    # errors are messages
    assert main(["export", str(run_dir / "plan.json"), "--out", str(tmp_path / "q.json"),
                 "--weights"]) == 2
    assert "needs a run folder" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "q.json")]) == 2
    assert "no such run folder or plan file" in capsys.readouterr().err


# ---- TorchRec for real ------------------------------------------------------------------------
def test_to_torchrec_gives_embedding_bag_configs(torchrec, run):
    run_dir, cfg = run
    schema = PreparedDataset(cfg["data"]["path"]).schema
    plan = DimensionPlan.load(run_dir / "plan.json")
    configs = plan.to_torchrec(schema)
    assert all(isinstance(c, torchrec.EmbeddingBagConfig) for c in configs)
    assert [(c.name, c.feature_names, c.num_embeddings, c.embedding_dim) for c in configs] == [
        ("t_f1", ["f1"], schema.vocab_sizes[1], 4), ("t_f2", ["f2"], schema.vocab_sizes[2], 4),
        ("t_f3", ["f3"], schema.vocab_sizes[3], 8)]
    assert {c.pooling for c in configs} == {torchrec.PoolingType.SUM}
    assert [c.embedding_dim for c in plan.to_torchrec(round_to=1)] == [3, 2, 6]


def test_embedding_bag_collection_forward_matches_the_model(torchrec, run, tmp_path):
    run_dir, cfg = run
    model, plan = _trained_model(run_dir, cfg)
    out = tmp_path / "tables.json"
    assert main(["export", str(run_dir), "--out", str(out), "--weights"]) == 0
    configs = load_configs(out)
    ebc = torchrec.EmbeddingBagCollection(tables=configs, device=torch.device("cpu"))
    ebc.load_state_dict(torch.load(tmp_path / "tables.pt", weights_only=True)["state_dict"])
    exp = TorchRecExport.load(out)
    weights = load_weights(tmp_path / "tables.pt")
    ids = torch.from_numpy(PreparedDataset(cfg["data"]["path"]).split("test").x[:32].copy())
    kjt = exp.kjt(ids)
    assert kjt.keys() == ["f1", "f2", "f3"]
    with torch.no_grad():
        pooled = ebc(kjt)
        want = model.embedding(ids)
    assert pooled.values().shape == (32, 4 + 4 + 8)
    for k, t in enumerate(exp.tables):
        got = pooled[t.feature]
        assert got.shape == (32, t.embedding_dim)
        a = weights["alignment"].get(t.feature)
        pad = torch.nn.functional.pad
        aligned = got @ a["weight"] + a.get("bias", 0) if a else pad(got, (0, 8 - got.shape[1]))
        torch.testing.assert_close(aligned, want[:, k])
    # the same through the helper
    ebc2 = exp.embedding_bag_collection(tmp_path / "tables.pt")
    torch.testing.assert_close(ebc2(kjt).values(), pooled.values())


def test_fbgemm_kernels_need_the_rounded_widths(torchrec):
    """FBGEMM's table-batched kernel (what sharded / fused TorchRec tables run on) takes the
    exported widths and refuses the exact searched ones that are not multiples of 4."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    plan = _plan([0, 3, 4, 6, 1])

    def tbe(exp):
        return SplitTableBatchedEmbeddingBagsCodegen(
            [(t.num_embeddings, t.embedding_dim, EmbeddingLocation.HOST, ComputeDevice.CPU)
             for t in exp.tables])

    kernel = tbe(torchrec_export(plan))
    ids = torch.tensor([1, 2, 3, 4], dtype=torch.long)
    offsets = torch.arange(5, dtype=torch.long)  # 4 tables x batch of 1, one id each
    assert kernel(ids, offsets).shape == (1, 4 + 4 + 8 + 4)
    with pytest.raises(AssertionError, match="multiple of 4"):
        tbe(torchrec_export(plan, round_to=1))
