"""Serving export (ONNX, torch.export): numerical parity with the PyTorch model for every base model,
a plan with a dropped field, SSEDS's scatter alignment and MDE's frequency blocks, at several batch
sizes; rounding the exported tables; the sidecar; ``embdim export --format onnx|torch-export``.

The ONNX tests skip when onnx / onnxscript / onnxruntime are not installed, except with
EMBDIM_REQUIRE_ONNX=1 (CI, which installs the ``export`` extra through ``test``: .ci/run), where they
fail instead.
"""

import json
import os
import sys

import numpy as np
import pytest
import torch

from embdim.cli import main
from embdim.data import PreparedDataset
from embdim.data.preparation import prepare
from embdim.errors import EmbdimError
from embdim.experiment import run_experiment
from embdim.export.serving import (
    export_onnx,
    export_program,
    export_run,
    load_run_model,
    rounded_embedding,
    save_program,
)
from embdim.nn.embedding import FieldEmbedding
from embdim.nn.models import MODEL_NAMES, build_model
from embdim.plan import DimensionPlan

TOLERANCE = 1e-5
BATCHES = (1, 64, 1000)
VOCAB = [10, 20, 30, 40, 50]


@pytest.fixture(scope="module")
def ort():
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as e:
        if os.environ.get("EMBDIM_REQUIRE_ONNX") == "1":
            pytest.fail(f"EMBDIM_REQUIRE_ONNX=1 but the export extra does not import: {e}")
        pytest.skip(f"onnx / onnxscript / onnxruntime not installed ({e}): pip install embdim[export]")
    return onnxruntime


def _plan(dims=(3, 0, 8, 5, 2), **kw) -> DimensionPlan:
    """Mixed widths, field b dropped."""
    return DimensionPlan(method="hand", field_names=list("abcde"), vocab_sizes=VOCAB, dims=list(dims),
                         full_dim=8, **kw)


def _ids(batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, v, (batch,), generator=g) for v in VOCAB], dim=1)


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Weights and BatchNorm statistics far from their initialisation (the tables start at 1e-4,
    where every model outputs about the same probability and parity would say little)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def _eager(model, ids):
    """What the exported model must compute: the eval-mode model's logits through a sigmoid."""
    model.eval()
    with torch.no_grad():
        return torch.sigmoid(model(ids)).numpy()


def _onnx_parity(ort, model, path) -> float:
    """Largest |ONNX - PyTorch| over the batch sizes of :data:`BATCHES`."""
    export_onnx(model, VOCAB, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for b in BATCHES:
        ids = _ids(b, seed=b)
        got = session.run(["probability"], {"ids": ids.numpy()})[0]
        want = _eager(model, ids)
        assert got.shape == (b,) and got.dtype == np.float32
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


# ---- parity --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnx_matches_pytorch_for_every_base_model(ort, name, tmp_path):
    model = _randomised(build_model(name, VOCAB, _plan()))
    want = _eager(model, _ids(64))
    assert want.std() > 0.01  # the outputs depend on the input, so agreement means something
    assert _onnx_parity(ort, model, tmp_path / f"{name}.onnx") <= TOLERANCE


@pytest.mark.parametrize("align", ["pad", "scatter"])
def test_onnx_matches_pytorch_for_pad_and_sseds_scatter_alignment(ort, align, tmp_path):
    kept = [[0, 5, 7], [], list(range(8)), [1, 2, 3, 4, 6], [3, 6]]
    plan = _plan(kept_indices=kept)
    model = _randomised(build_model("deepfm", VOCAB, plan, options={"align": align, "align_always": True}))
    assert _onnx_parity(ort, model, tmp_path / "m.onnx") <= TOLERANCE


def test_onnx_matches_pytorch_for_an_mde_block_plan(ort, tmp_path):
    blocks = [[{"start": 2, "stop": 4, "dim": 6, "reserved_ids": [0]},
               {"start": 4, "stop": v, "dim": 2, "reserved_ids": [1]}] for v in VOCAB]
    plan = _plan(dims=(6, 6, 6, 6, 6), value_dim_rule={"blocks": blocks})
    model = _randomised(build_model("ipnn", VOCAB, plan))
    assert type(model.embedding).__name__ == "BlockFieldEmbedding"
    assert _onnx_parity(ort, model, tmp_path / "m.onnx") <= TOLERANCE


def test_torch_export_program_matches_pytorch_after_save_and_load(tmp_path):
    model = _randomised(build_model("autoint", VOCAB, _plan()))
    save_program(export_program(model, VOCAB), tmp_path / "m.pt2")
    loaded = torch.export.load(str(tmp_path / "m.pt2")).module()
    for b in BATCHES:
        ids = _ids(b, seed=b)
        with torch.no_grad():
            got = loaded(ids).numpy()
        assert got.shape == (b,)
        np.testing.assert_allclose(got, _eager(model, ids), atol=TOLERANCE, rtol=0)


# ---- rounding the exported tables ----------------------------------------------------------------
@pytest.mark.parametrize("align", ["linear", "pad", "scatter"])
def test_rounded_tables_compute_the_same_embeddings(align):
    kept = [[0, 5, 7], [], list(range(8)), [1, 2, 3, 4, 6], [3, 6]]
    emb = FieldEmbedding.from_plan(_plan(kept_indices=kept), align=align, bias=align == "linear")
    _randomised(emb)
    rounded = rounded_embedding(emb, 4)
    assert rounded.dims == [4, 0, 8, 8, 4]
    assert rounded.embedding_params == 10 * 4 + 30 * 8 + 40 * 8 + 50 * 4 > emb.embedding_params
    ids = _ids(100)
    torch.testing.assert_close(rounded(ids), emb(ids), atol=1e-6, rtol=0)
    assert rounded_embedding(emb, 1) is emb


# ---- a run folder through the command line ---------------------------------------------------------
@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A prepared CSV dataset (it has a vocabulary.parquet) and a 1-epoch NFM run of a plan that
    drops one field."""
    work = tmp_path_factory.mktemp("serving")
    rng = np.random.default_rng(0)
    n = 600
    city = rng.choice(["paris", "rome", "oslo", "lima"], n)
    device = rng.choice(["ios", "android", "web"], n)
    noise = rng.choice(["x", "y"], n)
    age = rng.integers(18, 70, n)
    clicked = (city == "paris") | (device == "ios") & (rng.random(n) < 0.5)
    lines = ["city,device,noise,age,clicked"] + [f"{c},{d},{z},{a},{int(y)}" for c, d, z, a, y in
                                                 zip(city, device, noise, age, clicked, strict=True)]
    (work / "clicks.csv").write_text("\n".join(lines) + "\n")
    data = work / "data"
    schema = prepare("csv", [work / "clicks.csv"], data, label="clicked", positive=["1"],
                     categorical=["city", "device", "noise"], numeric=["age"], min_count=1, quiet=True)
    plan = DimensionPlan(method="hand", field_names=schema.field_names, vocab_sizes=schema.vocab_sizes,
                         dims=[3, 2, 0, 4], full_dim=4, schema_hash=schema.content_hash)
    plan.save(work / "plan.json")
    cfg = {"data": {"path": str(data)}, "model": {"name": "nfm"},
           "method": {"name": "plan", "path": str(work / "plan.json")},
           "train": {"epochs": 1, "batch_size": 100}}
    run_experiment(cfg, work / "run", quiet=True)
    return work / "run", data


def test_load_run_model_is_the_model_the_run_evaluated(csv_run):
    run_dir, data = csv_run
    run = load_run_model(run_dir)
    assert run.plan.dims == [3, 2, 0, 4] and not run.model.training
    test = PreparedDataset(data).split("test")
    ids = torch.from_numpy(test.x[:].astype(np.int64))
    from embdim.train.metrics import roc_auc

    probs = _eager(run.model, ids)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert roc_auc(test.y[:], probs) == pytest.approx(metrics["test_auc"], abs=1e-6)


def test_cli_exports_onnx_with_a_sidecar_and_the_vocabulary(ort, csv_run, tmp_path, capsys):
    run_dir, data = csv_run
    out = tmp_path / "clicks.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(out)]) == 0
    assert "ids [batch, 4] int64 -> probability [batch]" in capsys.readouterr().out
    side = json.loads((tmp_path / "clicks.onnx.json").read_text())
    schema = PreparedDataset(data).schema
    assert side["format"] == "embdim-serving/1" and side["model_format"] == "onnx"
    assert side["schema_hash"] == schema.content_hash
    assert side["vocabulary_hash"] == schema.options["vocabulary_hash"]
    assert [f["name"] for f in side["fields"]] == ["city", "device", "noise", "age"]
    assert [f["vocab_size"] for f in side["fields"]] == schema.vocab_sizes
    assert side["dropped_fields"] == ["noise"] and [f["kept"] for f in side["fields"]] == [1, 1, 0, 1]
    assert side["ids"] == {"oov_id": 0, "missing_id": 1, "first_value_id": 2}
    assert side["input"] == {"name": "ids", "dtype": "int64", "shape": ["batch", 4]}
    assert side["embedding_params"] == side["plan_embedding_params"]
    assert not list(tmp_path.glob(".*partial"))

    # a server encodes raw values with the copied vocabulary and gets the model's probabilities
    import polars as pl

    vocab = pl.read_parquet(tmp_path / side["vocabulary_file"])
    lookup = {(f, v): i for f, v, i in vocab.select("field", "value", "id").iter_rows()}
    raw = [{"city": "paris", "device": "ios", "noise": "x"}, {"city": "atlantis", "device": "web"}]
    ids = np.array([[lookup.get((f["name"], r[f["name"]]), side["ids"]["oov_id"])
                     if f["name"] in r else side["ids"]["missing_id"] for f in side["fields"]]
                    for r in raw], dtype=np.int64)
    assert ids[1, 0] == 0 and ids[1, 3] == 1  # unseen city: OOV; no age: missing
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"ids": ids})[0]
    np.testing.assert_allclose(got, _eager(load_run_model(run_dir).model, torch.from_numpy(ids)),
                               atol=TOLERANCE, rtol=0)


def test_cli_round_to_reports_the_parameter_cost_and_keeps_the_outputs(csv_run, tmp_path, capsys):
    run_dir, data = csv_run
    out = tmp_path / "m.pt2"
    assert main(["export", str(run_dir), "--format", "torch-export", "--out", str(out),
                 "--round-to", "4"]) == 0
    printed = capsys.readouterr().out
    side = json.loads((tmp_path / "m.pt2.json").read_text())
    vocab = PreparedDataset(data).schema.vocab_sizes
    assert side["plan_embedding_params"] == vocab[0] * 3 + vocab[1] * 2 + vocab[3] * 4
    assert side["embedding_params"] == (vocab[0] + vocab[1] + vocab[3]) * 4 and side["round_to"] == 4
    extra = side["embedding_params"] - side["plan_embedding_params"]
    assert f"+{extra:,}" in printed
    ids = torch.from_numpy(PreparedDataset(data).split("test").x[:].astype(np.int64))
    with torch.no_grad():
        got = torch.export.load(str(out)).module()(ids).numpy()
    np.testing.assert_allclose(got, _eager(load_run_model(run_dir).model, ids), atol=TOLERANCE, rtol=0)


def test_default_output_is_in_the_run_folder(csv_run):
    run_dir, _ = csv_run
    result = export_run(run_dir, "torch-export")
    assert result.model_path == run_dir / "export" / "model.pt2" and result.sidecar_path.exists()


def test_export_refusals(csv_run, tmp_path, monkeypatch):
    run_dir, _ = csv_run
    assert main(["export", str(run_dir / "plan.json"), "--format", "onnx"]) == 2  # a plan, not a run
    assert main(["export", str(run_dir), "--format", "onnx", "--weights"]) == 2
    assert main(["export", str(run_dir), "--format", "onnx", "--round-to", "0"]) == 2
    (tmp_path / "half").mkdir()
    for name in ("config.yaml", "plan.json"):
        (tmp_path / "half" / name).write_bytes((run_dir / name).read_bytes())
    with pytest.raises(EmbdimError, match="checkpoints/best.pt"):
        load_run_model(tmp_path / "half")
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(EmbdimError, match=r"embdim\[export\]"):
        export_run(run_dir, "onnx", tmp_path / "m.onnx")
