"""`embdim prepare` for Avazu, MovieLens (ml-1m, ml-100k, ml-latest), generic CSV and Parquet.

Each test builds a small file in tmp_path in the format's real layout and checks the fields,
labels, values and the format's own bad-input cases.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from embdim.cli import main
from embdim.data.dataset import PreparedDataset
from embdim.data.preparation import load_vocabulary, prepare
from embdim.data.schema import SPLITS
from embdim.errors import ConfigError, DataError


def all_rows(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """x, y of a dataset prepared with split_ratios=(1, 0, 0) (every row in train, in order)."""
    ds = PreparedDataset(out)
    assert ds.schema.splits["valid"] == ds.schema.splits["test"] == 0
    return np.asarray(ds.split("train").x), np.asarray(ds.split("train").y)


def decode(out: Path, field: str, ids: np.ndarray) -> list[str | None]:
    """Ids of ``field`` back to values (None = missing, '<oov>' = OOV)."""
    v = load_vocabulary(out)[field]
    by_id = dict(zip(v["id"].to_list(), v["value"].to_list(), strict=True))
    return [None if i == 1 else by_id.get(int(i), "<oov>") for i in ids]


ALL_TRAIN = {"split_ratios": (1.0, 0.0, 0.0), "min_count": 1, "quiet": True}

# ---------------------------------------------------------------------------------------------
# Avazu

AVAZU_HEADER = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,"
                "app_category,device_id,device_ip,device_model,device_type,device_conn_type,"
                "C14,C15,C16,C17,C18,C19,C20,C21")


def write_avazu(path: Path, n: int = 60, bad: dict[int, tuple[int, str]] | None = None) -> Path:
    lines = [AVAZU_HEADER]
    for i in range(n):
        hour = f"1410{21 + i % 3}{i % 24:02d}"  # 2014-10-21 (Tue) .. 2014-10-23 (Thu)
        fields = [f"{10**18 + i}", str(i % 2), hour, "1005", str(i % 2), f"site{i % 4}", "d", "c",
                  "app", "ad", "ac", f"dev{i % 5}", f"ip{i}", "m", "1", "0",
                  *(str(100 + (i * k) % 7) for k in range(1, 9))]
        for col, value in (bad or {}).items():
            if col[0] == i:
                fields[col[1]] = value
        lines.append(",".join(fields))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_avazu_fields_hour_and_weekday(tmp_path):
    src = write_avazu(tmp_path / "train.csv")
    out = tmp_path / "av"
    schema = prepare("avazu", [src], out, **ALL_TRAIN)
    names = AVAZU_HEADER.split(",")
    assert schema.field_names == ["hour", "weekday", *names[3:]]
    assert schema.label == "click" and schema.num_fields == 23
    x, y = all_rows(out)
    assert y.tolist() == [float(i % 2) for i in range(60)]
    assert decode(out, "hour", x[:, 0]) == [str(i % 24) for i in range(60)]
    assert decode(out, "weekday", x[:, 1]) == [str(2 + i % 3) for i in range(60)]
    assert decode(out, "site_id", x[:, 4]) == [f"site{i % 4}" for i in range(60)]


def test_avazu_time_split_uses_the_hour_column(tmp_path):
    src = write_avazu(tmp_path / "train.csv")
    out = tmp_path / "av"
    schema = prepare("avazu", [src], out, split="time", min_count=1, quiet=True)
    ds = PreparedDataset(out)
    hours = [int(f"1410{21 + i % 3}{i % 24:02d}") for i in range(60)]
    order = sorted(range(60), key=lambda i: (hours[i], i))
    assert schema.splits == {"train": 48, "valid": 6, "test": 6}
    # the first 80% by (time, row) are train, ...; inside a split rows keep the file order
    for s, rows in zip(SPLITS, (order[:48], order[48:54], order[54:]), strict=True):
        x = ds.split(s).x
        assert decode(out, "C14", x[:, -8]) == [str(100 + i % 7) for i in sorted(rows)]
        assert ds.split(s).y.tolist() == [float(i % 2) for i in sorted(rows)]


def test_avazu_bad_hour_and_label(tmp_path):
    src = write_avazu(tmp_path / "a.csv", bad={(7, 2): "14109999"})
    with pytest.raises(DataError, match="YYMMDDHH") as e:
        prepare("avazu", [src], tmp_path / "o", quiet=True)
    assert (e.value.line, e.value.column) == (9, "hour")  # header is line 1, row 7 is line 9
    src = write_avazu(tmp_path / "b.csv", bad={(3, 1): "yes"})
    with pytest.raises(DataError) as e:
        prepare("avazu", [src], tmp_path / "o", quiet=True)
    assert (e.value.line, e.value.column) == (5, "click")
    schema = prepare("avazu", [src], tmp_path / "o", quiet=True, on_bad_row="skip")
    assert schema.options["bad_rows"] == 1 and sum(schema.splits.values()) == 59
    bad = tmp_path / "c.csv"
    bad.write_text("id,hour,C1\n1,14102100,5\n")
    with pytest.raises(DataError, match="no 'click' column"):
        prepare("avazu", [bad], tmp_path / "o2", quiet=True)


# ---------------------------------------------------------------------------------------------
# MovieLens

def write_ml1m(folder: Path) -> Path:
    folder.mkdir()
    (folder / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "2::Café Society (1999)::Comedy|Drama\n"
        "3::No Year::Drama\n".encode("latin-1"))
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    ratings = [(1, 1, 5), (1, 2, 3), (2, 1, 4), (2, 3, 2), (2, 2, 5), (1, 3, 1), (2, 9, 4)]
    (folder / "ratings.dat").write_text(
        "".join(f"{u}::{m}::{r}::{978300760 + k}\n" for k, (u, m, r) in enumerate(ratings)))
    return folder


def test_movielens_1m_joins_the_8_fields(tmp_path):
    folder = write_ml1m(tmp_path / "ml-1m")
    out = tmp_path / "ml"
    schema = prepare("movielens", [folder], out, **ALL_TRAIN)
    assert schema.field_names == ["movieId", "year", "genres", "userId", "gender", "age",
                                  "occupation", "zip"]
    assert schema.label == "rating>=4" and schema.options["variant"] == "ml-1m"
    x, y = all_rows(out)
    assert y.tolist() == [1, 0, 1, 0, 1, 0, 1]
    col = dict(zip(schema.field_names, x.T, strict=True))
    assert decode(out, "movieId", col["movieId"]) == ["1", "2", "1", "3", "2", "3", "9"]
    assert decode(out, "year", col["year"]) == ["1995", "1999", "1995", None, "1999", None, None]
    assert decode(out, "genres", col["genres"])[:2] == ["Animation|Children's|Comedy",
                                                        "Comedy|Drama"]
    assert decode(out, "gender", col["gender"])[:3] == ["F", "F", "M"]
    assert decode(out, "zip", col["zip"])[:3] == ["48067", "48067", "70072"]
    # movie 9 is not in movies.dat: its movie attributes are missing, not an error
    assert decode(out, "genres", col["genres"])[6] is None


def test_movielens_first_genre_threshold_and_explicit_files(tmp_path):
    folder = write_ml1m(tmp_path / "ml-1m")
    out = tmp_path / "ml"
    files = [folder / "ratings.dat", folder / "movies.dat", folder / "users.dat"]
    schema = prepare("movielens", files, out, genres="first", rating_threshold=5, **ALL_TRAIN)
    x, y = all_rows(out)
    assert y.tolist() == [1, 0, 0, 0, 1, 0, 0]
    assert decode(out, "genres", x[:, 2])[:2] == ["Animation", "Comedy"]
    assert schema.options["genres"] == "first" and schema.options["rating_threshold"] == 5
    with pytest.raises(DataError, match="no MovieLens ratings file"):
        prepare("movielens", [folder / "movies.dat"], tmp_path / "o", quiet=True)
    (folder / "users.dat").unlink()
    with pytest.raises(DataError, match="users.dat"):
        prepare("movielens", [folder], tmp_path / "o", quiet=True)


def test_movielens_100k_genre_flags_and_age_groups(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    flags = ["0"] * 19
    flags[1] = flags[5] = "1"  # Action, Comedy
    (folder / "u.item").write_bytes(
        ("1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n"
         "2|Les Misérables (1995)|01-Jan-1995||http://y|" + "|".join(["0"] * 8 + ["1"] + ["0"] * 10)
         + "\n").encode("latin-1"))
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    (folder / "u.data").write_text("1\t1\t5\t874965758\n2\t2\t3\t876893171\n1\t2\t4\t878542960\n")
    out = tmp_path / "ml"
    schema = prepare("movielens", [folder], out, **ALL_TRAIN)
    assert schema.options["variant"] == "ml-100k" and schema.num_fields == 8
    x, y = all_rows(out)
    assert y.tolist() == [1, 0, 1]
    assert decode(out, "genres", x[:, 2]) == ["Action|Comedy", "Drama", "Drama"]
    assert decode(out, "age", x[:, 5]) == ["18", "50", "18"]
    assert decode(out, "year", x[:, 1]) == ["1995"] * 3


def test_movielens_latest_csv_has_four_fields(tmp_path):
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "movies.csv").write_text(
        'movieId,title,genres\n1,"Lock, Stock and Two Smoking Barrels (1998)",Comedy|Crime\n'
        "2,Jumanji (1995),(no genres listed)\n")
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.5,964981247\n"
        "2,1,0.5,964982224\n")
    out = tmp_path / "ml"
    schema = prepare("movielens", [folder], out, rating_threshold=3.5, **ALL_TRAIN)
    assert schema.field_names == ["movieId", "year", "genres", "userId"]
    x, y = all_rows(out)
    assert y.tolist() == [1, 1, 0]
    assert decode(out, "year", x[:, 1]) == ["1998", "1995", "1998"]
    assert decode(out, "genres", x[:, 2]) == ["Comedy|Crime", None, "Comedy|Crime"]
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,great,964981247\n")
    with pytest.raises(DataError) as e:
        prepare("movielens", [folder], tmp_path / "o", quiet=True)
    assert (e.value.path, e.value.line, e.value.column) == (str(folder / "ratings.csv"), 3,
                                                            "rating")


# ---------------------------------------------------------------------------------------------
# generic CSV / Parquet

def adult_like(n: int = 200) -> pl.DataFrame:
    rng = np.random.default_rng(3)
    work = np.array(["Private", "Self-emp", "Gov", "?"])[rng.integers(0, 4, n)]
    return pl.DataFrame({
        "age": rng.integers(17, 90, n),
        "workclass": work,
        "gain": np.where(rng.random(n) < 0.9, 0, rng.integers(1, 99999, n)),
        "hours": rng.integers(1, 99, n).astype(float),
        "income": np.where(rng.random(n) < 0.25, ">50K", "<=50K"),
        "ts": np.arange(n)[::-1] // 3,
    })


CSV_OPTIONS = {"label": "income", "positive": [">50K"], "na_values": ["?"],
               "categorical": ["workclass"], "numeric": ["age", "gain", "hours"]}


def test_csv_label_mapping_missing_values_and_quantile_buckets(tmp_path):
    df = adult_like()
    src = tmp_path / "adult.csv"
    df.write_csv(src)
    out = tmp_path / "ad"
    schema = prepare("csv", [src], out, numeric_buckets=4, **CSV_OPTIONS, **ALL_TRAIN)
    assert schema.field_names == ["age", "workclass", "gain", "hours"]  # file order
    assert [f.kind for f in schema.fields] == ["numeric_bucketed", "categorical",
                                               "numeric_bucketed", "numeric_bucketed"]
    x, y = all_rows(out)
    assert y.tolist() == (df["income"] == ">50K").cast(float).to_list()
    work = decode(out, "workclass", x[:, 1])
    assert work == [None if w == "?" else w for w in df["workclass"]]
    edges = schema.options["numeric_edges"]
    assert len(edges["age"]) == 3 and edges["gain"][0] == 0.0
    # bucket k holds edges[k-1] < v <= edges[k]; the zeros of 'gain' get a bucket of their own
    for f, name in ((0, "age"), (2, "gain")):
        bucket = [int(v) for v in decode(out, name, x[:, f])]
        expected = np.searchsorted(edges[name], df[name].to_numpy(), side="left")
        assert bucket == expected.tolist()
    assert len(set(decode(out, "gain", x[:, 2]))) == 2


def test_csv_log2_bucketing_and_zero_one_labels(tmp_path):
    df = adult_like().with_columns((pl.col("income") == ">50K").cast(pl.Int8).alias("income"))
    src = tmp_path / "a.csv"
    df.write_csv(src)
    out = tmp_path / "o"
    options = {**CSV_OPTIONS, "positive": None}
    prepare("csv", [src], out, numeric_bucketing="log2", **options, **ALL_TRAIN)
    x, y = all_rows(out)
    assert y.tolist() == df["income"].cast(float).to_list()
    ages = decode(out, "age", x[:, 0])
    assert ages == [str(int(np.floor(np.log(a) ** 2))) for a in df["age"]]


def test_csv_bad_values_are_located_and_skippable(tmp_path):
    text = adult_like(20).write_csv()
    lines = text.splitlines()
    lines[4] = lines[4].replace(lines[4].split(",")[0], "forty", 1)  # age, line 5
    lines[9] = ",".join(lines[9].split(",")[:-1])  # a missing column, line 10
    src = tmp_path / "a.csv"
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        prepare("csv", [src], tmp_path / "o", **CSV_OPTIONS, quiet=True)
    assert (e.value.line, e.value.column) == (5, "age") and "'forty'" in str(e.value)
    schema = prepare("csv", [src], tmp_path / "o", **CSV_OPTIONS, quiet=True, on_bad_row="skip")
    assert [b["line"] for b in schema.options["first_bad_rows"]] == [5, 10]
    assert sum(schema.splits.values()) == 18
    header_only = tmp_path / "h.csv"
    header_only.write_text(lines[0] + "\n")
    with pytest.raises(DataError, match="no data rows"):
        prepare("csv", [header_only], tmp_path / "o2", **CSV_OPTIONS, quiet=True)
    with pytest.raises(DataError, match="no column 'salary'"):
        prepare("csv", [src], tmp_path / "o2", **{**CSV_OPTIONS, "label": "salary"}, quiet=True)


def test_csv_label_must_be_binary_without_positive(tmp_path):
    src = tmp_path / "a.csv"
    adult_like(10).write_csv(src)
    with pytest.raises(DataError, match="label must be 0 or 1") as e:
        prepare("csv", [src], tmp_path / "o", **{**CSV_OPTIONS, "positive": None}, quiet=True)
    assert e.value.line == 2 and e.value.column == "income"


def test_csv_quoted_fields_with_separators(tmp_path):
    src = tmp_path / "q.csv"
    src.write_text('y,city,n\n1,"Paris, FR",3\n0,"Rome, ""IT""",4\n1,Oslo,5\n0,"a,b"\n')
    with pytest.raises(DataError) as e:
        prepare("csv", [src], tmp_path / "o", label="y", categorical=["city"], numeric=["n"],
                quiet=True)
    assert e.value.line == 5 and "found 2" in str(e.value)
    prepare("csv", [src], tmp_path / "o", label="y", categorical=["city"], numeric=["n"],
            on_bad_row="skip", **ALL_TRAIN)
    x, _ = all_rows(tmp_path / "o")
    assert decode(tmp_path / "o", "city", x[:, 0]) == ["Paris, FR", 'Rome, "IT"', "Oslo"]


def test_csv_time_split_ties_broken_by_row_order(tmp_path):
    df = adult_like(50)
    src = tmp_path / "a.csv"
    df.write_csv(src)
    out = tmp_path / "t"
    prepare("csv", [src], out, split="time", time_column="ts", **CSV_OPTIONS, quiet=True)
    ts = df["ts"].to_list()
    order = sorted(range(50), key=lambda i: (ts[i], i))
    ds = PreparedDataset(out)
    labels = (df["income"] == ">50K").cast(float).to_list()
    for s, rows in zip(SPLITS, (order[:40], order[40:45], order[45:]), strict=True):
        assert ds.split(s).y.tolist() == [labels[i] for i in sorted(rows)]
    with pytest.raises(ConfigError, match="split='time'"):
        prepare("csv", [src], tmp_path / "x", time_column="ts", **CSV_OPTIONS, quiet=True)


def test_parquet_reads_typed_columns_and_names_bad_rows(tmp_path):
    df = adult_like(100).with_columns(
        (pl.lit(dt.datetime(2020, 1, 1)) + pl.duration(hours=pl.col("ts"))).alias("when"))
    src = tmp_path / "a.parquet"
    df.write_parquet(src, row_group_size=30)
    out = tmp_path / "p"
    schema = prepare("parquet", [src], out, chunk_rows=16, split="time", time_column="when",
                     **CSV_OPTIONS, min_count=1, quiet=True)
    assert schema.field_names == ["age", "workclass", "gain", "hours"]
    assert sum(schema.splits.values()) == 100
    bad = df.with_columns(df["hours"].cast(pl.String).scatter(41, "many"))
    bad.write_parquet(tmp_path / "b.parquet")
    with pytest.raises(DataError) as e:
        prepare("parquet", [tmp_path / "b.parquet"], tmp_path / "o", chunk_rows=16, **CSV_OPTIONS,
                quiet=True)
    assert (e.value.line, e.value.column) == (42, "hours")
    (tmp_path / "c.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="Parquet"):
        prepare("parquet", [tmp_path / "c.parquet"], tmp_path / "o", **CSV_OPTIONS, quiet=True)


def test_generic_formats_need_label_and_features(tmp_path):
    src = tmp_path / "a.csv"
    adult_like(10).write_csv(src)
    with pytest.raises(ConfigError, match="--label"):
        prepare("csv", [src], tmp_path / "o", categorical=["workclass"], quiet=True)
    with pytest.raises(ConfigError, match="--categorical"):
        prepare("csv", [src], tmp_path / "o", label="income", quiet=True)


def test_cli_csv_options(tmp_path):
    src = tmp_path / "a.csv"
    adult_like().write_csv(src)
    out = tmp_path / "cli"
    code = main(["--quiet", "prepare", "csv", str(src), "--out", str(out), "--label", "income",
                 "--positive", ">50K", "--na-values", "?", "--categorical", "workclass",
                 "--numeric", "age,hours", "--numeric-buckets", "5", "--min-count", "1"])
    assert code == 0
    schema = PreparedDataset(out).schema
    assert schema.field_names == ["age", "workclass", "hours"]
    assert schema.options["numeric_buckets"] == 5 and schema.options["na_values"] == ["?"]


def test_crlf_line_ends_byte_order_mark_and_no_final_line_end(tmp_path):
    src = tmp_path / "w.csv"
    src.write_bytes(b"\xef\xbb\xbfy,a,n\r\n1,x,3\r\n0,y,4\r\n1,x,5")
    out = tmp_path / "o"
    prepare("csv", [src], out, label="y", categorical=["a"], numeric=["n"], **ALL_TRAIN)
    x, y = all_rows(out)
    assert y.tolist() == [1, 0, 1] and decode(out, "a", x[:, 0]) == ["x", "y", "x"]


def test_embdim_prepare_does_not_import_torch(tmp_path):
    """`embdim prepare` needs neither torch nor its start-up time (about a second): the CLI shuts
    torch.distributed down only where a command imported it."""
    import subprocess
    import sys

    (tmp_path / "d.csv").write_text("y,a\n" + "".join(f"{i % 2},v{i % 5}\n" for i in range(50)))
    code = ("import sys; from embdim.cli import main; "
            f"rc = main(['--quiet', 'prepare', 'csv', {str(tmp_path / 'd.csv')!r}, '--label', 'y', "
            f"'--categorical', 'a', '--out', {str(tmp_path / 'out')!r}]); "
            "print(rc, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["0", "False"], proc.stdout + proc.stderr
