"""Chunked reading of delimited text files with exact bad-row locations.

The fast path reads a block of whole lines as bytes and parses it with ``polars.read_csv`` (every
column as String), casts the numeric columns and runs the row checks as vectorised expressions.
Only when a block fails a structural test (polars refuses it, a line has the wrong number of
columns, a blank line, bytes that are not UTF-8) is that block re-scanned line by line in Python to
find the exact bad lines; the good lines are then parsed with the fast path again.

Line numbers are 1-based and count the header line, so they match what ``sed -n Np`` shows.
A record must fit on one line (a quoted field may hold the separator, not a newline).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import polars as pl

from embdim.data.readers.base import MAX_REPORTED_BAD_ROWS, BadRowLog, Chunk, ColumnRules, require_file
from embdim.errors import DataError, short_repr

# A multi-character separator (MovieLens-1M's "::") is replaced by this byte before parsing.
_UNIT_SEPARATOR = "\x1f"
_SAMPLE_BYTES = 1 << 16
_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark at the start of a file is skipped


@dataclass(frozen=True)
class TextLayout:
    """How a delimited text file is laid out.

    ``columns``: the column names when the file has no header (``has_header=False``);
    ``encoding``: ``"utf-8"`` or ``"latin-1"`` (MovieLens-1M/100k); ``null_values``: strings read
    as missing besides the empty field.
    """

    separator: str
    columns: tuple[str, ...] | None = None
    has_header: bool = False
    quote_char: str | None = None
    encoding: str = "utf-8"
    null_values: tuple[str, ...] = ()

    @property
    def parse_separator(self) -> str:
        return self.separator if len(self.separator) == 1 else _UNIT_SEPARATOR


def read_header(path: Path, layout: TextLayout) -> list[str]:
    """The column names of ``path``: its header line, or ``layout.columns``."""
    require_file(path)
    if not layout.has_header:
        assert layout.columns is not None
        return list(layout.columns)
    with open(path, "rb") as f:
        first = f.readline()
    if not first.strip():
        raise DataError("empty file (expected a header line)", path=str(path), line=1)
    try:
        text = first.rstrip(b"\r\n").removeprefix(_BOM).decode(layout.encoding)
    except UnicodeDecodeError:
        raise DataError("undecodable bytes in the header (not UTF-8)", path=str(path),
                        line=1) from None
    if layout.quote_char:
        names = next(csv.reader([text], delimiter=layout.separator, quotechar=layout.quote_char))
    else:
        names = text.split(layout.separator)
    names = [n.strip() for n in names]
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise DataError(f"duplicate column name {n!r} in the header", path=str(path), line=1)
        seen.add(n)
    return names


def read_text_chunks(path: Path, layout: TextLayout, rules: ColumnRules, *, chunk_rows: int,
                     bad: BadRowLog) -> Iterator[Chunk]:
    """Yield validated chunks of about ``chunk_rows`` rows of ``path`` (columns ``rules.read``).

    Raises DataError for a missing/empty file, a header without the needed columns, or (with
    ``bad.mode == "error"``) the first bad row.
    """
    names = read_header(path, layout)
    missing = [c for c in rules.read if c not in names]
    if missing:
        raise DataError(f"no column {missing[0]!r} (columns are: {', '.join(names)})",
                        path=str(path), line=1 if layout.has_header else None, column=missing[0])
    parser = _ChunkParser(path, layout, rules, names, bad)
    rows = 0
    with open(path, "rb") as f:
        bom = len(_BOM) if f.read(len(_BOM)) == _BOM else 0
        f.seek(bom)
        header = f.readline() if layout.has_header else b""
        first_line = 2 if layout.has_header else 1
        sample = f.read(_SAMPLE_BYTES)
        if not sample.strip(b"\r\n"):
            raise DataError("empty file (no data rows)", path=str(path))
        avg_line = len(sample) / max(1, sample.count(b"\n"))
        f.seek(bom + len(header))
        progress = bom + len(header)
        block_bytes = max(1, min(int(chunk_rows * avg_line), path.stat().st_size))
        for data, end in _line_blocks(f, block_bytes):
            frame, newlines = parser.parse(data, end, first_line)
            first_line += newlines
            rows += frame.height
            yield Chunk(frame, progress + end)
            progress = 0
    if rows == 0 and bad.count == 0:
        raise DataError("no data rows", path=str(path))


def _line_blocks(f: BinaryIO, block_bytes: int) -> Iterator[tuple[bytes, int]]:
    """The rest of ``f`` as ``(data, end)`` blocks: ``data[:end]`` holds whole lines, about
    ``block_bytes`` bytes (one longer line makes a longer block). What follows ``end`` is read
    again with the next block (the file is seeked back), so no block is copied to be cut."""
    while True:
        start = f.tell()
        data = f.read(block_bytes)
        if not data:
            return
        end = data.rfind(b"\n") + 1
        while end == 0 and len(data) % block_bytes == 0:  # a line longer than a block
            more = f.read(block_bytes)
            if not more:
                break
            data += more
            end = data.rfind(b"\n") + 1
        if end == 0:  # the last line, without a line end
            end = len(data)
        f.seek(start + end)
        yield data, end


class _ChunkParser:
    """Parses one block of whole lines into a validated DataFrame."""

    def __init__(self, path: Path, layout: TextLayout, rules: ColumnRules, names: list[str],
                 bad: BadRowLog):
        self.path, self.layout, self.rules, self.names, self.bad = path, layout, rules, names, bad
        self.sep = layout.parse_separator.encode()
        # polars returns projected columns in file order
        self.read_idx = sorted(names.index(c) for c in rules.read)
        self.read_names = [names[i] for i in self.read_idx]
        self.quote = layout.quote_char.encode() if layout.quote_char else None

    def parse(self, data: bytes, end: int, first_line: int) -> tuple[pl.DataFrame, int]:
        """(validated frame, number of line ends) for the whole lines ``data[:end]``."""
        if self.layout.encoding != "utf-8" or len(self.layout.separator) > 1:
            data = self._normalise(data[:end])
            end = len(data)
        newlines, sound = self._structure(data, end)
        n_lines = newlines + (data[end - 1] != 10)
        frame = self._read(data, n_lines) if sound else None
        if frame is not None:
            return self._validate(frame, lambda rows: first_line + rows, self.bad), newlines
        # The slow path: find the bad lines one by one, then validate the good ones and report
        # all bad rows of the block in line order (so an error names the first one).
        good, lines, problems = self._scan_lines(data[:end], first_line)
        frame = self._read(b"".join(good), len(lines)) if good else self._empty()
        if frame is None:  # polars refuses lines that pass the column count (a stray quote)
            good, lines, problems = self._unparsable_lines(good, lines, problems)
            frame = self._read(b"".join(good), len(lines)) if good else self._empty()
        if frame is None:
            raise DataError(f"could not parse lines {first_line}..{first_line + newlines} "
                            "(a quoted field spanning lines?)", path=str(self.path), line=first_line)
        found = BadRowLog("skip")
        frame = self._validate(frame, lambda rows: lines[rows], found)
        problems += [(b["line"], b["column"], b["message"]) for b in found.first]
        problems.sort(key=lambda p: p[0])
        self.bad.report_rows(self.path, problems, count=len(problems) - len(found.first) + found.count)
        return frame, newlines

    def _normalise(self, data: bytes) -> bytes:
        if self.layout.encoding != "utf-8":
            data = data.decode(self.layout.encoding).encode("utf-8")
        if len(self.layout.separator) > 1:
            data = data.replace(self.layout.separator.encode(), self.sep)
        return data

    def _structure(self, data: bytes, end: int) -> tuple[int, bool]:
        """(line ends in ``data[:end]``, whether a cheap test shows every line non-blank with
        the right number of separators), with vectorised byte counts.

        The count is per line: a short and a long line in one block balance out in a total."""
        arr = np.frombuffer(data, dtype=np.uint8, count=end)
        if self.quote is not None and data.find(self.quote, 0, end) >= 0:
            return self._quoted_structure(data, end)
        ends = np.flatnonzero(arr == 10)
        starts = np.concatenate(([0], ends[ends < end - 1] + 1))
        # Per-line counts in uint16 when no line is long enough to hold 65,536 separators (the
        # count cannot wrap); an int64 count would first copy the whole block to 8 bytes a byte.
        longest = int(np.diff(starts, append=end).max()) if len(starts) else 0
        count_dtype = np.uint16 if longest <= np.iinfo(np.uint16).max else np.int64
        is_separator = (arr == self.sep[0]).view(np.uint8)
        separators = np.add.reduceat(is_separator, starts, dtype=count_dtype)
        sound = bool((separators == len(self.names) - 1).all())
        if len(self.names) == 1:  # no separator to show a blank line
            lengths = np.diff(ends, prepend=-1) - 1
            sound = sound and not ((lengths == 0) | ((lengths == 1) & (arr[ends - 1] == 13))).any()
        return len(ends), sound

    def _quoted_structure(self, data: bytes, end: int) -> tuple[int, bool]:
        """Like :meth:`_structure` when quotes may hide separators: per line, drop the quoted
        sections (a regex, vectorised in polars), then count the separators left."""
        text = data[:end].decode("utf-8", errors="replace")
        lines = pl.Series([text]).str.split("\n").explode()
        if text.endswith("\n"):
            lines = lines.head(-1)
        q = re.escape(self.layout.quote_char or '"')
        unquoted = lines.str.strip_chars_end("\r").str.replace_all(f"{q}[^{q}]*{q}", "")
        separators = unquoted.str.count_matches(self.layout.parse_separator, literal=True)
        sound = bool((separators == len(self.names) - 1).all())
        if len(self.names) == 1:
            sound = sound and bool((lines.str.strip_chars_end("\r").str.len_bytes() > 0).all())
        return text.count("\n"), sound

    def _read(self, data: bytes, n_lines: int) -> pl.DataFrame | None:
        """The block as a frame of String columns ``rules.read``, or None if polars refuses it."""
        try:
            frame = pl.read_csv(
                data, has_header=False, columns=self.read_idx, infer_schema=False, n_rows=n_lines,
                separator=self.layout.parse_separator, quote_char=self.layout.quote_char,
                null_values=list(self.layout.null_values) or None, truncate_ragged_lines=False,
                raise_if_empty=False)
        except (pl.exceptions.PolarsError, pl.exceptions.PanicException, UnicodeDecodeError,
                ValueError):
            return None
        frame.columns = self.read_names
        if frame.height != n_lines:
            return None
        return frame

    def _field_count(self, line: bytes) -> int:
        text = line.rstrip(b"\r").decode("utf-8", errors="replace")
        if self.quote is not None and self.quote in line:
            # csv.reader takes a carriage return inside a field for a line end and raises
            row = next(csv.reader([text.replace("\r", " ")], delimiter=self.layout.parse_separator,
                                  quotechar=self.layout.quote_char))
            return len(row)
        return text.count(self.layout.parse_separator) + 1

    def _empty(self) -> pl.DataFrame:
        return pl.DataFrame({c: pl.Series([], dtype=pl.String) for c in self.rules.read})

    def _scan_lines(self, data: bytes, first_line: int
                    ) -> tuple[list[bytes], np.ndarray, list[tuple[int, str | None, str]]]:
        """Check line by line: (the good lines, each with its line end, as polars reads them on
        the fast path; their line numbers; (line, column, message) of every bad one)."""
        good: list[bytes] = []
        numbers: list[int] = []
        problems: list[tuple[int, str | None, str]] = []
        for i, raw in enumerate(data.split(b"\n")):
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if self._blank(line):
                continue  # blank lines are ignored
            number = first_line + i
            problem = self._line_problem(line)
            if problem is None:
                good.append(raw + b"\n")
                numbers.append(number)
            else:
                problems.append((number, *problem))
        return good, np.asarray(numbers, dtype=np.int64), problems

    def _blank(self, line: bytes) -> bool:
        """Whether a line (without its line end) is blank: empty, or, in a file of several
        columns, only white space other than the separator (a tab-separated line of empty fields
        is a row, as the fast path reads it)."""
        if len(self.names) == 1:
            return not line
        return not line.strip(b" \t\x0b\x0c\r".replace(self.sep, b""))

    def _unparsable_lines(self, good: list[bytes], numbers: np.ndarray,
                          problems: list[tuple[int, str | None, str]]
                          ) -> tuple[list[bytes], np.ndarray, list[tuple[int, str | None, str]]]:
        """Move the lines that polars refuses one at a time (an unbalanced quote) from ``good``
        to ``problems``; a rare path, taken only when a block of good-looking lines fails."""
        kept = [k for k, line in enumerate(good) if self._read(line, 1) is not None]
        refused = sorted(set(range(len(good))) - set(kept))
        problems = problems + [(int(numbers[k]), None, "cannot parse the line (an unbalanced quote?)")
                               for k in refused]
        return [good[k] for k in kept], numbers[kept], problems

    def _line_problem(self, line: bytes) -> tuple[str | None, str] | None:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            for name, value in zip(self.names, line.split(self.sep), strict=False):
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError as e:
                    return name, (f"undecodable bytes {short_repr(value[e.start:e.end])} (not UTF-8; "
                                  "re-encode the file as UTF-8)")
            return None, "undecodable bytes (not UTF-8)"
        n = self._field_count(line)
        if n == len(self.names):
            return None
        return None, f"expected {len(self.names)} columns, found {n}"

    def _validate(self, frame: pl.DataFrame, line_of: Callable[[np.ndarray], np.ndarray],
                  bad: BadRowLog) -> pl.DataFrame:
        return validate_frame(frame.select(self.rules.read), self.rules, bad, self.path, line_of)


def validate_frame(frame: pl.DataFrame, rules: ColumnRules, bad: BadRowLog, path: Path,
                   line_of: Callable[[np.ndarray], np.ndarray]) -> pl.DataFrame:
    """Check ``rules.casts`` and ``rules.checks``; report bad rows and drop them.

    ``line_of(rows)`` maps 0-based row positions in ``frame`` to the line (or row) numbers used in
    messages. Returns ``frame`` (columns as they were) with only the good rows.
    """
    try:  # the common case: every value casts, so one strict cast settles it
        cast = frame.with_columns(pl.col(c).cast(t) for c, t in rules.casts.items())
        cast_failed = False
    except pl.exceptions.PolarsError:
        cast = frame.with_columns(pl.col(c).cast(t, strict=False) for c, t in rules.casts.items())
        cast_failed = True
    checks = cast.select(chk.bad.fill_null(True).alias(f"__chk{i}")
                         for i, chk in enumerate(rules.checks))
    if not cast_failed and not (checks.width and checks.select(pl.any_horizontal(pl.all()))
                                .to_series().any()):
        return frame
    # One boolean column per test (True = bad): casts first, then checks.
    parts = [pl.DataFrame([(frame[c].is_not_null() & cast[c].is_null()).alias(f"__bad{i}")
                           for i, c in enumerate(rules.casts)])] if rules.casts else []
    flags = pl.concat([*parts, checks] if checks.width else parts, how="horizontal")
    tests = [(c, f"not a number: {{value}} (column {c!r} is numeric)") for c in rules.casts]
    tests += [(chk.column, f"{chk.message}, got {{value}}") for chk in rules.checks]
    rows = np.flatnonzero(flags.select(pl.any_horizontal(pl.all())).to_series().to_numpy())
    # For the first few bad rows, the first failing test (casts before checks, in column order).
    details = []
    for r in rows[:MAX_REPORTED_BAD_ROWS]:
        k = int(np.argmax(flags.row(int(r))))
        column, message = tests[k]
        value = frame[column][int(r)] if column in frame.columns else None
        details.append((int(line_of(np.array([r]))[0]), column,
                        message.replace("{value}", "(missing)" if value is None else short_repr(value))))
    bad.report_rows(path, details, count=len(rows))
    keep = np.ones(frame.height, dtype=bool)
    keep[rows] = False
    return frame.filter(pl.Series(keep))
