"""MovieLens ratings as a CTR task: the 8 fields of AutoDim's case study (section 3.9).

Fields ``movieId, year, genres, userId, gender, age, occupation, zip``; label ``rating >=
rating_threshold`` (default 4). Three layouts, recognised by file name:

* ml-1m: ``ratings.dat`` (``user::movie::rating::ts``), ``users.dat``
  (``user::gender::age::occupation::zip``), ``movies.dat`` (``movie::title (year)::g1|g2``), latin-1;
* ml-100k: ``u.data`` (tab: user, item, rating, ts), ``u.user`` (``user|age|gender|occupation|zip``),
  ``u.item`` (``|``-separated, title with year, 19 genre flags; latin-1), ``u.genre`` (optional);
  the raw age is mapped to ml-1m's age groups (1, 18, 25, 35, 45, 50, 56) so both give the same field;
* ml-latest / ml-20m / ml-25m: ``ratings.csv`` (``userId,movieId,rating,timestamp``) and
  ``movies.csv`` (``movieId,title,genres``); no user demographics, so 4 fields
  (``movieId, year, genres, userId``).

``year`` is the ``(YYYY)`` at the end of the title (missing if absent). ``genres`` is, by default,
the movie's whole genre list as one categorical value (``"Animation|Children's|Comedy"``: a movie
has one value per field, and the combination keeps all the information); ``genres="first"`` keeps
only the first listed genre. A rating whose movie or user is absent from the side files gets
missing values for those fields. ``timestamp`` is the time column for ``split="time"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from embdim.data.readers.base import (
    BadRowLog,
    Chunk,
    ColumnRules,
    FieldRecipe,
    Recipe,
    present_check,
    rating_range_check,
    require_file,
)
from embdim.data.readers.text import TextLayout, read_text_chunks
from embdim.errors import ConfigError, DataError

GENRE_CHOICES = ("all", "first")
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western")
RATING_COLUMNS = ("user", "movie", "rating", "timestamp")
_SIDE_CHUNK_ROWS = 1 << 30  # side files are small: read each as one chunk


@dataclass(frozen=True)
class _Variant:
    name: str
    ratings: str
    movies: str
    users: str | None
    ratings_layout: TextLayout
    movies_layout: TextLayout
    users_layout: TextLayout | None
    rename: dict[str, str]  # header names -> our names (ml-latest CSV)


_ML1M = _Variant(
    "ml-1m", "ratings.dat", "movies.dat", "users.dat",
    TextLayout("::", columns=RATING_COLUMNS, encoding="latin-1"),
    TextLayout("::", columns=("movie", "title", "genres"), encoding="latin-1"),
    TextLayout("::", columns=("user", "gender", "age", "occupation", "zip"), encoding="latin-1"),
    {})
_ML100K = _Variant(
    "ml-100k", "u.data", "u.item", "u.user",
    TextLayout("\t", columns=RATING_COLUMNS, encoding="latin-1"),
    TextLayout("|", columns=("movie", "title", "release_date", "video_release_date", "imdb_url",
                             *(f"g{i}" for i in range(len(ML100K_GENRES)))), encoding="latin-1"),
    TextLayout("|", columns=("user", "age", "gender", "occupation", "zip"), encoding="latin-1"),
    {})
_MLCSV = _Variant(
    "ml-latest", "ratings.csv", "movies.csv", None,
    TextLayout(",", has_header=True, quote_char='"'),
    TextLayout(",", has_header=True, quote_char='"'),
    None,
    {"userId": "user", "movieId": "movie"})
VARIANTS = (_ML1M, _ML100K, _MLCSV)


def _resolve(inputs: list[Path]) -> tuple[_Variant, dict[str, Path]]:
    """Which layout, and the path of each of its files (a folder, or the files themselves)."""
    if len(inputs) == 1 and inputs[0].is_dir():
        folder = inputs[0]
        present = {p.name: p for p in folder.iterdir()}
    else:
        present = {p.name: p for p in inputs}
        for p in inputs:
            if p.is_dir():
                raise ConfigError(f"movielens: give one folder or the files, not both ({p})")
    for variant in VARIANTS:
        if variant.ratings in present:
            folder = present[variant.ratings].parent
            files = {}
            for name in (variant.ratings, variant.movies, variant.users, "u.genre"):
                if name is None:
                    continue
                path = present.get(name, folder / name)
                if name == "u.genre" and not path.exists():
                    continue
                files[name] = require_file(path)
            return variant, files
    known = ", ".join(v.ratings for v in VARIANTS)
    where = inputs[0] if len(inputs) == 1 else ", ".join(map(str, inputs))
    raise DataError(f"no MovieLens ratings file found (looked for {known})", path=str(where))


def _read_all(path: Path, layout: TextLayout, rules: ColumnRules, bad: BadRowLog,
              rename: dict[str, str]) -> pl.DataFrame:
    """A whole (small) side file, validated; ``rules`` use our names, the file may use others
    (``rename``: file name -> ours); the ``rules.casts`` columns come back cast."""
    raw_rules = ColumnRules(read=[_raw_name(c, rename) for c in rules.read],
                            casts={_raw_name(c, rename): t for c, t in rules.casts.items()},
                            checks=rules.checks)
    parts = [c.frame for c in read_text_chunks(path, layout, raw_rules,
                                               chunk_rows=_SIDE_CHUNK_ROWS, bad=bad)]
    if not any(p.height for p in parts):
        raise DataError("no valid rows", path=str(path))
    frame = pl.concat(parts).rename(rename, strict=False)
    return frame.with_columns(pl.col(c).cast(t) for c, t in rules.casts.items())


def _raw_name(name: str, rename: dict[str, str]) -> str:
    for raw, ours in rename.items():
        if ours == name:
            return raw
    return name


def _age_group(age: pl.Expr) -> pl.Expr:
    """ml-100k raw age -> ml-1m age group code (1, 18, 25, 35, 45, 50, 56)."""
    out = pl.when(age < 18).then(1)
    for upper, code in ((25, 18), (35, 25), (45, 35), (50, 45), (56, 50)):
        out = out.when(age < upper).then(code)
    return out.otherwise(56).cast(pl.String)


def _movies(variant: _Variant, files: dict[str, Path], genres: str, bad: BadRowLog) -> pl.DataFrame:
    """movie (Int64) -> year, genres (String)."""
    layout = variant.movies_layout
    if variant is _ML100K:
        names = ML100K_GENRES
        if "u.genre" in files:
            text = files["u.genre"].read_bytes().decode("latin-1")
            names = tuple(line.split("|")[0] for line in text.splitlines() if line.strip())
        flags = [f"g{i}" for i in range(len(ML100K_GENRES))]
        raw = _read_all(files[variant.movies], layout,
                        ColumnRules(read=["movie", "title", *flags], casts={"movie": pl.Int64}),
                        bad, {})
        genre_list = pl.concat_str([pl.when(pl.col(f) == "1").then(pl.lit(n))
                                    for f, n in zip(flags, names, strict=False)],
                                   separator="|", ignore_nulls=True)
        raw = raw.with_columns(genre_list.alias("genres"))
    else:
        raw = _read_all(files[variant.movies], layout,
                        ColumnRules(read=["movie", "title", "genres"], casts={"movie": pl.Int64}),
                        bad, variant.rename)
    genre = pl.col("genres").str.strip_chars()
    genre = pl.when(genre.is_in(["", "(no genres listed)"])).then(None).otherwise(genre)
    if genres == "first":
        genre = genre.str.split("|").list.first()
    year = pl.col("title").str.extract(r"\((\d{4})\)\s*$", 1)
    return (raw.select(pl.col("movie"), year.alias("year"), genre.alias("genres"))
            .unique(subset="movie", keep="first", maintain_order=True))


def _users(variant: _Variant, files: dict[str, Path], bad: BadRowLog) -> pl.DataFrame | None:
    """user (Int64) -> gender, age, occupation, zip (String), or None without a users file."""
    if variant.users is None:
        return None
    casts = {"user": pl.Int64}
    if variant is _ML100K:
        casts["age"] = pl.Int64
    raw = _read_all(files[variant.users], variant.users_layout,
                    ColumnRules(read=["user", "gender", "age", "occupation", "zip"], casts=casts),
                    bad, {})
    age = _age_group(pl.col("age")) if variant is _ML100K else pl.col("age")
    return (raw.with_columns(age.alias("age"))
            .unique(subset="user", keep="first", maintain_order=True))


def movielens_recipe(inputs: list[Path], *, rating_threshold: float = 4.0,
                     genres: str = "all") -> Recipe:
    """The MovieLens CTR recipe: ``inputs`` is the dataset folder, or its files."""
    if genres not in GENRE_CHOICES:
        raise ConfigError(f"genres must be one of {GENRE_CHOICES}, not {genres!r}")
    variant, files = _resolve(inputs)
    ratings_path = files[variant.ratings]
    rules = ColumnRules(
        read=[_raw_name(c, variant.rename) for c in RATING_COLUMNS],
        casts={_raw_name(c, variant.rename): t for c, t in
               (("user", pl.Int64), ("movie", pl.Int64), ("rating", pl.Float64),
                ("timestamp", pl.Int64))},
        checks=[present_check("rating", "rating"), rating_range_check("rating"),
                present_check("timestamp", "timestamp")])

    def chunks(chunk_rows: int, bad: BadRowLog) -> Iterator[Chunk]:
        movies = _movies(variant, files, genres, bad)
        users = _users(variant, files, bad)
        for chunk in read_text_chunks(ratings_path, variant.ratings_layout, rules,
                                      chunk_rows=chunk_rows, bad=bad):
            frame = (chunk.frame.rename(variant.rename, strict=False)
                     .with_columns(pl.col("user", "movie").cast(pl.Int64)))
            frame = frame.join(movies, on="movie", how="left", maintain_order="left")
            if users is not None:
                frame = frame.join(users, on="user", how="left", maintain_order="left")
            yield Chunk(frame, chunk.progress)

    as_str = {"movieId": pl.col("movie").cast(pl.String), "year": pl.col("year"),
              "genres": pl.col("genres"), "userId": pl.col("user").cast(pl.String)}
    if variant.users is not None:
        as_str.update({c: pl.col(c) for c in ("gender", "age", "occupation", "zip")})
    fields = [FieldRecipe(name, "categorical", expr) for name, expr in as_str.items()]
    label = (pl.col("rating").cast(pl.Float64) >= rating_threshold).cast(pl.Int8)
    return Recipe(format="movielens", label_name=f"rating>={rating_threshold:g}", label=label,
                  fields=fields, chunks=chunks, time=pl.col("timestamp").cast(pl.Float64),
                  progress_total=ratings_path.stat().st_size,
                  options={"variant": variant.name, "rating_threshold": rating_threshold,
                           "genres": genres, "files": sorted(files)})
