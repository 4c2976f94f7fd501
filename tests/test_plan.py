"""DimensionPlan: JSON round trip, parameter counts, refusal of a plan for another dataset."""

import json

import pytest

from embdim.data.schema import FieldSpec, Schema
from embdim.errors import EmbdimError, SchemaMismatchError
from embdim.plan import DimensionPlan


def _schema(vocab=(10, 20, 30), h="abc"):
    fields = [FieldSpec(f"f{i}", "categorical", v) for i, v in enumerate(vocab)]
    return Schema(label="y", fields=fields, splits={"train": 1, "valid": 1, "test": 1}, options={},
                  content_hash=h)


def test_round_trip_and_counts(tmp_path):
    plan = DimensionPlan(method="sseds", field_names=["a", "b", "c"], vocab_sizes=[10, 20, 30],
                         dims=[2, 0, 3], full_dim=4, schema_hash="h",
                         kept_indices=[[0, 3], [], [1, 2, 3]], extra={"saliency": [[0.1]]})
    assert plan.embedding_params == 10 * 2 + 30 * 3
    assert plan.fde_embedding_params == 60 * 4
    assert plan.kept_fields == [0, 2] and plan.dropped_fields == ["b"]
    plan.save(tmp_path / "plan.json")
    d = json.loads((tmp_path / "plan.json").read_text())
    assert d["embedding_params"] == 110 and d["fields"][1] == {"name": "b", "vocab_size": 20,
                                                               "dim": 0, "kept_indices": []}
    back = DimensionPlan.load(tmp_path / "plan.json")
    assert back == plan


def test_uniform_plan_matches_schema():
    plan = DimensionPlan.uniform(_schema(), 8, full_dim=32)
    plan.check_schema(_schema())
    assert plan.dims == [8, 8, 8] and plan.embedding_params == 60 * 8
    assert plan.fde_embedding_params == 60 * 32


@pytest.mark.parametrize("other, words", [
    (_schema(vocab=(10, 20, 31)), "f2: 30 vs 31"),
    (_schema(h="zzz"), "schema hash differs"),
])
def test_plan_for_another_dataset_is_refused(other, words):
    plan = DimensionPlan.uniform(_schema(), 8)
    with pytest.raises(SchemaMismatchError, match=words):
        plan.check_schema(other)


def test_inconsistent_plans_are_refused():
    with pytest.raises(EmbdimError, match="drops every field"):
        DimensionPlan(method="x", field_names=["a"], vocab_sizes=[3], dims=[0], full_dim=4)
    with pytest.raises(EmbdimError, match="kept indices"):
        DimensionPlan(method="x", field_names=["a"], vocab_sizes=[3], dims=[2], full_dim=4,
                      kept_indices=[[0]])


def _masked_plan():
    """A plan with an ``embedding`` entry and a payload (a pruning mask), as PEP writes one."""
    import numpy as np

    mask = np.zeros((60, 4), dtype=bool)
    mask[::2, :3] = True
    return DimensionPlan(method="toy", field_names=["a", "b", "c"], vocab_sizes=[10, 20, 30],
                         dims=[4, 4, 4], full_dim=4, schema_hash="h",
                         embedding={"kind": "toy-masked", "embedding_params": int(mask.sum()),
                                    "params_note": "non-zero entries"},
                         payload={"mask": mask})


def test_plan_with_embedding_entry_and_payload_round_trips(tmp_path):
    import numpy as np

    plan = _masked_plan()
    assert plan.embedding_params == 90  # the method's own count, not vocab x dim
    plan.save(tmp_path / "plan.json")
    assert (tmp_path / "plan.payload.npz").exists()
    d = json.loads((tmp_path / "plan.json").read_text())
    assert d["embedding"]["payload"] == "plan.payload.npz" and d["embedding_params"] == 90
    back = DimensionPlan.load(tmp_path / "plan.json")
    assert back.embedding == plan.embedding and back.embedding_params == 90
    np.testing.assert_array_equal(back.payload["mask"], plan.payload["mask"])


def test_plan_payload_missing_or_corrupt_is_one_clear_error(tmp_path):
    _masked_plan().save(tmp_path / "plan.json")
    (tmp_path / "plan.payload.npz").write_bytes(b"not a zip")
    with pytest.raises(EmbdimError, match="payload file plan.payload.npz is corrupt"):
        DimensionPlan.load(tmp_path / "plan.json")
    (tmp_path / "plan.payload.npz").unlink()
    with pytest.raises(EmbdimError, match="payload file plan.payload.npz is missing"):
        DimensionPlan.load(tmp_path / "plan.json")


@pytest.mark.parametrize("entry, message", [({"embedding_params": 3}, "embedding.kind"),
                                            ({"kind": "x"}, "embedding.embedding_params"),
                                            ({"kind": "x", "embedding_params": -1}, ">= 0")])
def test_malformed_embedding_entry_is_refused(tmp_path, entry, message):
    d = DimensionPlan.uniform(_schema(), 4).to_dict()
    d["embedding"] = entry
    (tmp_path / "plan.json").write_text(json.dumps(d))
    with pytest.raises(EmbdimError, match=message):
        DimensionPlan.load(tmp_path / "plan.json")


def test_build_model_uses_the_registered_embedding_kind():
    import torch

    from embdim.errors import ConfigError
    from embdim.nn.embedding import FieldEmbedding
    from embdim.nn.models import build_model
    from embdim.nn.plan_embeddings import EMBEDDING_KINDS, register_embedding_kind

    plan = _masked_plan()
    plan.schema_hash = ""
    with pytest.raises(ConfigError, match="embedding kind 'toy-masked' is unknown"):
        build_model("deepfm", plan.vocab_sizes, plan)
    built = []

    @register_embedding_kind("toy-masked")
    def build(plan, options):
        built.append(options.name)
        return FieldEmbedding(plan.vocab_sizes, plan.dims)

    try:
        model = build_model("deepfm", plan.vocab_sizes, plan)
        assert built == ["deepfm"] and model(torch.zeros(5, 3, dtype=torch.long)).shape == (5,)
    finally:
        EMBEDDING_KINDS.pop("toy-masked")
