"""Synthetic CTR data with planted truth, and the Criteo / Avazu text writers."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from embdim.data.dataset import PreparedDataset
from embdim.data.schema import FIRST_VALUE_ID, MISSING_ID, OOV_ID, SPLITS
from embdim.data.synthetic import (
    AVAZU_COLUMNS,
    MISSING_RAW,
    PlantedCTRModel,
    SyntheticSpec,
    SyntheticTruth,
    _split_assignment,
    default_demo_spec,
    main,
    make_synthetic_ctr,
    write_avazu_csv,
    write_criteo_tsv,
    write_synthetic_dataset,
)
from embdim.errors import DataError
from embdim.train.metrics import roc_auc as _roc_auc


def small_spec(**overrides) -> SyntheticSpec:
    kw = dict(field_names=["noise_small", "noise_big", "a", "b", "c"],
              cardinalities=[20, 3000, 50, 500, 200], true_dims=[0, 0, 2, 4, 8],
              zipf_exponent=1.2, first_order_std=1.0, interaction_std=2.0, seed=3)
    kw.update(overrides)
    return SyntheticSpec(**kw)


def target_encoding_auc(x_col: np.ndarray, y: np.ndarray) -> float:
    """AUC on the second half of a score = per-value mean label learned on the first half."""
    half = len(y) // 2
    card = int(x_col.max()) + 1
    clicks = np.bincount(x_col[:half], weights=y[:half], minlength=card)
    shows = np.bincount(x_col[:half], minlength=card)
    rate = (clicks + y[:half].mean()) / (shows + 1.0)
    return _roc_auc(y[half:], rate[x_col[half:]])


# -- the planted model ------------------------------------------------------------------------

def test_same_seed_gives_same_data_and_other_seed_differs():
    x1, y1, t1 = make_synthetic_ctr(small_spec(), 5000)
    x2, y2, t2 = make_synthetic_ctr(small_spec(), 5000)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert t1.to_dict() == t2.to_dict()
    x3, _, _ = make_synthetic_ctr(small_spec(seed=4), 5000)
    assert not np.array_equal(x1, x3)


def test_rows_do_not_depend_on_chunking_and_a_short_draw_is_a_prefix():
    spec = small_spec()
    x_long, y_long, _ = make_synthetic_ctr(spec, 70_000)  # more than one block of rows
    x_short, y_short, _ = make_synthetic_ctr(spec, 1000)
    np.testing.assert_array_equal(x_long[:1000], x_short)
    np.testing.assert_array_equal(y_long[:1000], y_short)
    model = PlantedCTRModel(spec)
    chunks = list(model.iter_chunks(70_000, chunk_rows=1))  # one block per chunk
    assert len(chunks) == 2
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), x_long)


def test_output_types_shapes_and_value_ranges():
    spec = small_spec()
    x, y, truth = make_synthetic_ctr(spec, 4000)
    assert x.dtype == np.int32 and x.shape == (4000, 5)
    assert y.dtype == np.float32 and set(np.unique(y)) <= {0.0, 1.0}
    assert (x >= 0).all() and (x < np.array(spec.cardinalities)).all()
    assert truth.n_rows == 4000 and truth.noise_fields == ["noise_small", "noise_big"]


def test_value_frequencies_follow_zipf():
    spec = SyntheticSpec(cardinalities=[1000], true_dims=[4], zipf_exponent=1.1)
    x, _, _ = make_synthetic_ctr(spec, 50_000)
    counts = np.sort(np.bincount(x[:, 0], minlength=1000))[::-1]
    assert counts[0] > 50 * max(counts[500], 1)  # the head dwarfs the median value
    assert counts[0] / counts[9] == pytest.approx(10 ** 1.1, rel=0.25)  # P(rank r) ~ (r+1)^-a
    # Ranks are shuffled onto raw indices: raw index 0 is not (necessarily) the most frequent.
    assert np.argmax(np.bincount(x[:, 0])) != 0


def test_noise_fields_do_not_move_the_planted_logit():
    spec = small_spec()
    model = PlantedCTRModel(spec)
    x, _, _ = make_synthetic_ctr(spec, 3000)
    shuffled = x.copy()
    rng = np.random.default_rng(0)
    for i in (0, 1):  # the noise fields, replaced by unrelated values
        shuffled[:, i] = rng.integers(0, spec.cardinalities[i], len(x))
    np.testing.assert_array_equal(model.logits(x), model.logits(shuffled))
    shuffled[:, 4] = rng.permutation(shuffled[:, 4])  # an informative field does move it
    assert not np.allclose(model.logits(x), model.logits(shuffled))


def test_noise_field_labels_look_random_while_informative_fields_predict_them():
    spec = small_spec()
    x, y, truth = make_synthetic_ctr(spec, 60_000)
    auc = [target_encoding_auc(x[:, i], y) for i in range(spec.num_fields)]
    assert abs(auc[0] - 0.5) < 0.02 and abs(auc[1] - 0.5) < 0.02
    assert min(auc[2:]) > 0.55
    # Chi-square of (value x click) for the 20-value noise field: no dependence.
    clicks = np.bincount(x[:, 0], weights=y, minlength=20)
    shows = np.bincount(x[:, 0], minlength=20)
    expected = shows * y.mean()
    chi2 = (((clicks - expected) ** 2 / expected)
            + ((shows - clicks - (shows - expected)) ** 2 / (shows - expected))).sum()
    assert chi2 < 19 + 6 * np.sqrt(2 * 19)  # dof 19: mean 19, sd ~6.2
    assert truth.variance_share[0] == truth.variance_share[1] == 0.0
    assert min(truth.variance_share[2:]) > 0


def test_field_information_lives_in_its_true_dimension():
    spec = small_spec()
    model = PlantedCTRModel(spec)
    for i, k in enumerate(spec.true_dims):
        e = model.planted_embeddings(i)
        assert e.shape == (spec.cardinalities[i], model.common_dim)
        assert np.linalg.matrix_rank(e) == k


def test_demo_spec_has_a_strong_recorded_bayes_auc_and_importance_grows_with_dim():
    spec = default_demo_spec()
    _, y, truth = make_synthetic_ctr(spec, 100_000)
    assert truth.bayes_auc > 0.7
    assert truth.bayes_logloss < 0.5
    assert truth.ctr == pytest.approx(spec.base_ctr, abs=0.02)
    assert set(truth.noise_fields) == {"f0", "f1"} and max(spec.cardinalities) == 50_000
    share = dict(zip(truth.true_dims, truth.variance_share, strict=True))  # last field per dim
    assert share[0] == 0.0
    dims = np.array(truth.true_dims)
    shares = np.array(truth.variance_share)
    assert shares[dims == 16].mean() > shares[dims == 4].mean() > shares[dims == 2].mean() > 0


@pytest.mark.parametrize("interaction", ["fm", "mlp"])
def test_noise_level_and_interaction_type(interaction):
    clean = make_synthetic_ctr(small_spec(interaction=interaction), 20_000)[2]
    noisy = make_synthetic_ctr(small_spec(interaction=interaction, noise_std=2.0), 20_000)[2]
    assert clean.interaction == interaction and clean.bayes_auc > 0.7
    assert noisy.bayes_auc < clean.bayes_auc


def test_missing_values_are_marked_and_contribute_nothing():
    spec = small_spec(missing_rate=[0.0, 0.0, 0.3, 0.0, 0.0])
    x, _, _ = make_synthetic_ctr(spec, 10_000)
    assert (x[:, 2] == MISSING_RAW).mean() == pytest.approx(0.3, abs=0.02)
    assert (x[:, [0, 1, 3, 4]] >= 0).all()
    model = PlantedCTRModel(spec)
    rows = x[x[:, 2] == MISSING_RAW][:100]  # the planted terms are those without field 2
    first, inter = model._raw_terms(rows)
    first_d, inter_d = model._raw_terms(rows, drop=2)
    np.testing.assert_allclose(first, first_d)
    np.testing.assert_allclose(inter, inter_d)


def test_truth_is_json_serialisable_and_round_trips(tmp_path):
    _, _, truth = make_synthetic_ctr(small_spec(), 2000)
    text = json.dumps(truth.to_dict(), allow_nan=False)
    assert SyntheticTruth.from_dict(json.loads(text)) == truth
    truth.save(tmp_path / "t.json")
    assert SyntheticTruth.load(tmp_path / "t.json") == truth
    assert SyntheticSpec.from_dict(truth.spec) == small_spec()


@pytest.mark.parametrize("bad", [
    dict(true_dims=[0, 0, 2, 4]),  # one too few
    dict(true_dims=[0, 0, 2, 4, 300]),  # more dims than values
    dict(interaction="cnn"),
    dict(base_ctr=1.5),
    dict(missing_rate=[0.1, 0.2]),
    dict(field_names=["a", "a", "b", "c", "d"]),
])
def test_invalid_specs_are_refused(bad):
    with pytest.raises(ValueError):
        small_spec(**bad)


# -- the prepared dataset ---------------------------------------------------------------------

def test_synthetic_dataset_follows_the_prepared_id_conventions(tmp_path):
    spec = small_spec()
    n = 20_000
    schema, truth = write_synthetic_dataset(tmp_path / "ds", spec, n, seed=5)
    ds = PreparedDataset(tmp_path / "ds")
    assert ds.schema.content_hash == schema.content_hash
    assert schema.label == "label" and schema.field_names == spec.field_names
    assert all(f.kind == "categorical" for f in schema.fields)
    assert schema.options["format"] == "synthetic" and schema.options["seed"] == 5
    assert SyntheticSpec.from_dict(schema.options["spec"]) == spec
    assert sum(schema.splits.values()) == n
    assert schema.splits == {"train": 16_000, "valid": 2_000, "test": 2_000}

    # Rebuild the raw rows of every split and check the encoding against them.
    x_raw, y_raw, _ = make_synthetic_ctr(spec, n)
    which = _split_assignment(schema.splits, 5)
    freqs = ds.frequencies()
    train_ids = np.asarray(ds.split("train").x)
    np.testing.assert_array_equal(np.asarray(ds.split("train").y), y_raw[which == 0])
    for i, field in enumerate(schema.fields):
        freq = freqs[i]
        assert len(freq) == field.vocab_size
        assert field.frequency["oov"] == freq[OOV_ID]
        assert field.frequency["kept_values"] == field.vocab_size - FIRST_VALUE_ID
        assert freq[OOV_ID] == 0 and freq[MISSING_ID] == 0  # min_count 1, nothing missing
        assert (np.diff(freq[FIRST_VALUE_ID:]) <= 0).all()  # ids by descending training count
        assert (freq[FIRST_VALUE_ID:] >= 1).all()
        np.testing.assert_array_equal(np.bincount(train_ids[:, i], minlength=len(freq)), freq)
        # One id per raw value, the same in every split; values unseen in training -> OOV.
        seen = np.unique(x_raw[which == 0, i])
        assert field.vocab_size == FIRST_VALUE_ID + len(seen)
        for s, split in enumerate(SPLITS):
            raw, ids = x_raw[which == s, i], np.asarray(ds.split(split).x)[:, i]
            pairs = np.unique(np.stack([raw, ids], axis=1), axis=0)
            assert len(np.unique(pairs[:, 0])) == len(pairs)
            np.testing.assert_array_equal(ids == OOV_ID, ~np.isin(raw, seen))
    # The 3000-value noise field has values in the test split never seen in training.
    assert (np.asarray(ds.split("test").x)[:, 1] == OOV_ID).any()

    saved = SyntheticTruth.load(tmp_path / "ds" / "truth.json")
    assert saved == truth and truth.bayes_on == "test split"
    test_logits = PlantedCTRModel(spec).logits(x_raw[which == 2])
    assert truth.bayes_auc == pytest.approx(_roc_auc(y_raw[which == 2], test_logits))
    assert truth.dataset["vocab_sizes"] == schema.vocab_sizes
    assert not list(tmp_path.glob(".ds*"))  # no temporary folder left behind


def test_synthetic_dataset_min_count_missing_values_and_determinism(tmp_path):
    spec = small_spec(missing_rate=0.1)
    schema, _ = write_synthetic_dataset(tmp_path / "a", spec, 10_000, min_count=5, seed=1)
    ds = PreparedDataset(tmp_path / "a")
    train_ids = np.asarray(ds.split("train").x)
    for i, freq in enumerate(ds.frequencies()):
        assert (freq[FIRST_VALUE_ID:] >= 5).all()
        assert freq[MISSING_ID] == (train_ids[:, i] == MISSING_ID).sum() > 0
        np.testing.assert_array_equal(np.bincount(train_ids[:, i], minlength=len(freq)), freq)
    assert ds.frequencies()[1][OOV_ID] > 0  # rare values of the 3000-value field share id 0
    again, _ = write_synthetic_dataset(tmp_path / "b", spec, 10_000, min_count=5, seed=1)
    assert again.content_hash == schema.content_hash
    other, _ = write_synthetic_dataset(tmp_path / "c", spec, 10_000, min_count=5, seed=2)
    assert other.content_hash != schema.content_hash
    with pytest.raises(DataError):
        write_synthetic_dataset(tmp_path / "a", spec, 1000)
    replaced, _ = write_synthetic_dataset(tmp_path / "a", spec, 1000, overwrite=True)
    assert PreparedDataset(tmp_path / "a").schema.splits == replaced.splits


# -- text files -------------------------------------------------------------------------------

HEX8 = r"^[0-9a-f]{8}$"


def read_text(path, separator: str, header: bool) -> pl.DataFrame:
    return pl.read_csv(path, separator=separator, has_header=header, infer_schema=False)


def test_criteo_tsv_format(tmp_path):
    path = write_criteo_tsv(tmp_path / "train.txt", 70_000, seed=1, chunk_rows=1)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) - 1 == 70_000
    assert all(line.count(b"\t") == 39 for line in lines[:2000])
    df = read_text(path, "\t", header=False)
    assert df.shape == (70_000, 40)
    assert set(df[:, 0].unique().to_list()) == {"0", "1"}
    assert 0.1 < df[:, 0].cast(pl.Int64).mean() < 0.4
    for j in range(1, 14):
        col = df[:, j].drop_nulls()
        assert col.str.contains(r"^\d+$").all()
    ints_missing = [df[:, j].null_count() for j in range(1, 14)]
    cats_missing = [df[:, j].null_count() for j in range(14, 40)]
    assert any(ints_missing) and any(cats_missing)
    for j in range(14, 40):
        assert df[:, j].drop_nulls().str.contains(HEX8).all()
    cards = [df[:, j].n_unique() for j in range(14, 40)]
    assert cards[0] <= 11 and cards[-1] > 5000  # log-spaced cardinalities 10 .. 1e6


def test_criteo_tsv_is_deterministic_and_chunk_independent(tmp_path):
    a = write_criteo_tsv(tmp_path / "a.txt", 70_000, seed=1, chunk_rows=1).read_bytes()
    b = write_criteo_tsv(tmp_path / "b.txt", 70_000, seed=1).read_bytes()
    assert a == b
    short = write_criteo_tsv(tmp_path / "s.txt", 100, seed=1).read_bytes()
    assert a.startswith(short)
    other = write_criteo_tsv(tmp_path / "c.txt", 2000, seed=2, cardinalities=[10] * 26)
    df = read_text(other, "\t", header=False)
    assert all(df[:, j].n_unique() <= 11 for j in range(14, 40))


def test_avazu_csv_format(tmp_path):
    n = 5000
    path = write_avazu_csv(tmp_path / "train.csv", n, seed=0,
                           cardinalities={"device_id": 1000, "device_ip": 5000})
    first = path.read_text().split("\n", 1)[0]
    assert first == ",".join(AVAZU_COLUMNS)
    df = read_text(path, ",", header=True)
    assert df.columns == list(AVAZU_COLUMNS) and df.height == n
    assert sum(df[c].null_count() for c in df.columns) == 0
    assert df["id"].str.contains(r"^\d+$").all()
    assert set(df["click"].unique().to_list()) == {"0", "1"}
    hour = df["hour"].cast(pl.Int64)
    assert df["hour"].str.contains(r"^1410(2[1-9]|30)([01]\d|2[0-3])$").all()
    assert hour.min() == 14102100 and hour.max() == 14103023
    assert (hour.diff().drop_nulls() >= 0).all()  # time-ordered
    for c in ("site_id", "site_domain", "app_id", "device_id", "device_ip", "device_model"):
        assert df[c].str.contains(HEX8).all()
    for c in ("C1", "banner_pos", "device_type", "C14", "C20", "C21"):
        assert df[c].str.contains(r"^-?\d+$").all()
    assert df["device_id"].n_unique() <= 1000


def test_module_command_writes_files(tmp_path, capsys):
    assert main(["criteo", str(tmp_path / "c.txt"), "1000", "3"]) == 0
    assert len((tmp_path / "c.txt").read_text().splitlines()) == 1000
    assert main(["avazu", str(tmp_path / "a.csv"), "100"]) == 0
    assert len((tmp_path / "a.csv").read_text().splitlines()) == 101
    assert main(["parquet", "x", "1"]) == 2
    assert "usage" in capsys.readouterr().err
