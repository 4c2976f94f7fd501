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
