"""Malformed inputs (issue 15): every text reader refuses a row with the wrong number of columns,
naming file and line, or counts and skips it with ``on_bad_row="skip"``, whatever the chunk size.

Each case puts a short row and a long row in the same file, so the two balance out in a total
separator count: only a per-line check sees them.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from embdim.cli import main
from embdim.data.preparation import prepare
from embdim.errors import DataError

CHUNKS = [1, 3, 100_000]
ALL_TRAIN = {"split_ratios": (1.0, 0.0, 0.0), "min_count": 1, "quiet": True}


def _csv(folder: Path) -> tuple[str, list[Path], dict, Path, int, int, int]:
    path = folder / "r.csv"
    path.write_text("label,a,b,unused\n1,x,p,9\n0,y\n1,z,q,8,E1,E2\n0,w,r,7\n1,x,p,1\n0,y,q,2\n"
                    "1,x,p,9\n0,y,q,2\n1,x,p,9\n0,y,q,2\n")
    return "csv", [path], {"label": "label", "categorical": ["a", "b"]}, path, 3, 4, 2


def _avazu(folder: Path):
    header = "id,click,hour,C1,site_id"
    rows = [f"{i},{i % 2},141021{i % 24:02d},100{i % 3},s{i % 4}" for i in range(12)]
    rows[4] = "4,0,14102104,1000"  # short
    rows[5] = "5,1,14102105,1001,s1,extra,more"  # long
    path = folder / "a.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return "avazu", [path], {}, path, 6, 5, 4


def _criteo(folder: Path):
    rows = []
    for i in range(12):
        rows.append("\t".join([str(i % 2), *(str(i + k) for k in range(13)),
                               *(f"c{(i + k) % 5}" for k in range(26))]))
    rows[2] = "\t".join(rows[2].split("\t")[:38])  # one column short
    rows[7] = rows[7] + "\textra"  # one column long
    path = folder / "t.tsv"
    path.write_text("\n".join(rows) + "\n")
    return "criteo", [path], {}, path, 3, 40, 38


def _ml1m(folder: Path):
    folder = folder / "ml-1m"
    folder.mkdir()
    (folder / "movies.dat").write_text("1::Toy Story (1995)::Comedy\n2::Heat (1995)::Action\n")
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    rows = [f"{1 + i % 2}::{1 + i % 2}::{1 + i % 5}::{978300760 + i}" for i in range(12)]
    rows[3] = "1::2::5"
    rows[6] = "2::1::4::978300766::9"
    (folder / "ratings.dat").write_text("\n".join(rows) + "\n")
    return "movielens", [folder], {}, folder / "ratings.dat", 4, 4, 3


def _ml100k_item(folder: Path):
    folder = folder / "ml-100k"
    folder.mkdir()
    flags = "|".join(["0"] * 18 + ["1"])
    items = [f"{m}|Movie {m} (1995)|01-Jan-1995||http://x|{flags}" for m in range(1, 7)]
    items[1] = "2|Movie 2 (1995)|01-Jan-1995||http://x"  # short
    items[2] = items[2] + "|1|1|1|1|1"  # long, balancing the short one
    (folder / "u.item").write_text("\n".join(items) + "\n")
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    (folder / "u.data").write_text("".join(f"{1 + i % 2}\t{1 + i % 6}\t{1 + i % 5}\t{874965758 + i}\n"
                                           for i in range(12)))
    return "movielens", [folder], {}, folder / "u.item", 2, 24, 5


def _ml_latest(folder: Path):
    folder = folder / "ml-latest-small"
    folder.mkdir()
    (folder / "movies.csv").write_text('movieId,title,genres\n1,"Toy Story (1995)",Comedy\n'
                                       "2,Heat (1995),Action\n")
    rows = [f"{1 + i % 2},{1 + i % 2},{1 + i % 5}.0,{978300760 + i}" for i in range(12)]
    rows[0] = "1,1,4.0"
    rows[1] = "2,2,3.0,978300761,x"
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    return "movielens", [folder], {}, folder / "ratings.csv", 2, 4, 3


CASES = {"csv": _csv, "avazu": _avazu, "criteo": _criteo, "ml-1m": _ml1m,
         "ml-100k-u.item": _ml100k_item, "ml-latest": _ml_latest}


@pytest.mark.parametrize("chunk_rows", CHUNKS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_row_with_the_wrong_column_count_is_refused_at_any_chunk_size(tmp_path, case, chunk_rows):
    fmt, inputs, options, bad_file, line, expected, found = CASES[case](tmp_path)
    with pytest.raises(DataError) as e:
        prepare(fmt, inputs, tmp_path / "out", chunk_rows=chunk_rows, **ALL_TRAIN, **options)
    assert str(e.value).startswith(f"{bad_file}, line {line}: expected {expected} columns, "
                                   f"found {found}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("chunk_rows", CHUNKS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_skip_mode_counts_both_rows_with_the_wrong_column_count(tmp_path, case, chunk_rows):
    fmt, inputs, options, bad_file, line, expected, found = CASES[case](tmp_path)
    schema = prepare(fmt, inputs, tmp_path / "out", chunk_rows=chunk_rows, on_bad_row="skip",
                     **ALL_TRAIN, **options)
    assert schema.options["bad_rows"] == 2
    first = schema.options["first_bad_rows"][0]
    assert (first["file"], first["line"], first["column"]) == (bad_file.name, line, None)
    assert first["message"] == f"expected {expected} columns, found {found}"


def test_cli_names_the_line_of_the_issue_reproducer(tmp_path, capsys):
    _, _, _, path, _, _, _ = _csv(tmp_path)
    code = main(["--quiet", "prepare", "csv", str(path), "--out", str(tmp_path / "p"),
                 "--label", "label", "--categorical", "a,b", "--min-count", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"embdim: error: {path}, line 3: expected 4 columns, found 2")


def _random_csv(rng: random.Random) -> bytes:
    """A small CSV with a header ``label,a,b`` and rows of random shape and content."""
    cells = ["0", "1", "x", "", '"q,r"', "2", "\xff", " "]
    lines = [b"label,a,b"]
    for _ in range(rng.randint(1, 12)):
        n = rng.choice([3, 3, 3, 3, 1, 2, 4])
        lines.append(",".join(rng.choice(cells) for _ in range(n)).encode("utf-8", "surrogateescape")
                     if rng.random() < 0.9 else rng.choice([b"", b"\xff\xfe,1,2", b"1,a"]))
    return b"\n".join(lines) + (b"\n" if rng.random() < 0.8 else b"")


@pytest.mark.parametrize("seed", range(150))
def test_random_csv_either_prepares_or_names_a_line(tmp_path, seed):
    """A small fuzz of the text reader: the result (rows kept, or the first bad line) is the same
    at every chunk size, and every failure is the library's own error."""
    path = tmp_path / "f.csv"
    path.write_bytes(_random_csv(random.Random(seed)))
    outcomes = set()
    for k, chunk_rows in enumerate((1, 2, 100_000)):
        try:
            schema = prepare("csv", [path], tmp_path / f"o{k}", label="label", categorical=["a", "b"],
                             chunk_rows=chunk_rows, **ALL_TRAIN)
            outcomes.add(("ok", schema.splits["train"]))
        except DataError as e:
            outcomes.add(("error", e.line))
    assert len(outcomes) == 1, outcomes


# ---- ratings out of range, Netflix skip mode, long values (item 10) ---------------------------

@pytest.mark.parametrize("rating", ["99", "-3", "1e400"])
def test_movielens_ratings_outside_half_to_five_are_bad_rows(tmp_path, rating):
    from embdim.autoemb.stream import prepare_stream

    fmt, inputs, _, ratings, *_ = _ml_latest(tmp_path)
    lines = ratings.read_text().splitlines()
    lines[1:3] = ["1,1,4.0,978300760", "2,2,3.0,978300761"]  # the two bad-width rows made good
    lines[5] = f"1,2,{rating},978300799"
    ratings.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 6, column 'rating': rating must be between 0.5 and 5"):
        prepare(fmt, inputs, tmp_path / "out", **ALL_TRAIN)
    with pytest.raises(DataError, match=r"line 6, column 'rating': rating must be between 0.5 and 5"):
        prepare_stream(fmt, inputs, tmp_path / "stream", quiet=True)
    schema = prepare(fmt, inputs, tmp_path / "out", on_bad_row="skip", **ALL_TRAIN)
    assert schema.options["bad_rows"] == 1


def test_netflix_skip_mode_counts_bad_movie_lines_bytes_and_ratings(tmp_path):
    from embdim.autoemb.stream import prepare_stream

    path = tmp_path / "combined_data_1.txt"
    path.write_bytes(b"1:\n7,3,2005-09-06\nx9:\n8,5,2005-05-13\n8,4,2005-05-14\n2:\n"
                     b"7,4,2004-01-01\n9,\xff\xfe,2005-09-06\n9,1e400,2005-09-06\n9,2,2005-09-07\n")
    with pytest.raises(DataError, match="line 3: movie id line is not"):
        prepare_stream("netflix", [path], tmp_path / "e", quiet=True)
    stream = prepare_stream("netflix", [path], tmp_path / "s", quiet=True, on_bad_row="skip")
    assert len(stream) == 3  # (1, 7), (2, 7), (2, 9 rating 2)
    meta = stream.meta
    assert meta["bad_rows"] == 5  # the bad movie line, its 2 ratings, the bytes, the 1e400
    assert [b["line"] for b in meta["first_bad_rows"]] == [3, 4, 5, 8, 9]


def test_a_long_bad_value_is_cut_in_the_message(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("label,a\n1,x\n" + "7" + "9" * 10_000 + ",y\n")
    with pytest.raises(DataError) as e:
        prepare("csv", [path], tmp_path / "o", label="label", categorical=["a"], **ALL_TRAIN)
    assert "line 3" in str(e.value) and len(str(e.value)) < 250
