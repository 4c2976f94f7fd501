"""Issue 15: output folders of ``prepare`` / ``stream prepare`` never cost an input or a foreign
folder (``--overwrite`` replaces only an embdim dataset), and no temporary folder outlives a
SIGTERM or, after a ``kill -9``, the next preparation of the same folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embdim.autoemb.stream import prepare_stream
from embdim.cli import main
from embdim.data.preparation import prepare
from embdim.errors import DataError
from embdim.folders import OWNER_FILE

CSV_OPTIONS = {"label": "label", "categorical": ["a", "b"], "min_count": 1, "quiet": True}


def _csv(path: Path, rows: int = 40) -> Path:
    path.write_text("label,a,b\n" + "".join(f"{i % 2},x{i % 3},y{i % 5}\n" for i in range(rows)))
    return path


def _ratings(folder: Path, rows: int = 200) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{1 + i % 7},{1 + i % 11},{1 + i % 5}.0,{1000 + i}\n" for i in range(rows)))
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ---- --overwrite (item 2) ----------------------------------------------------------------------

def test_stream_prepare_into_its_input_folder_is_refused_even_with_overwrite(tmp_path, capsys):
    mls = _ratings(tmp_path / "mls")
    before = _snapshot(mls)
    assert main(["--quiet", "stream", "prepare", "movielens", str(mls), "--out", str(mls),
                 "--overwrite"]) == 2
    assert "is or contains an input" in capsys.readouterr().err
    with pytest.raises(DataError, match="is or contains an input"):
        prepare_stream("movielens", [mls / "ratings.csv"], tmp_path, overwrite=True, quiet=True)
    assert _snapshot(mls) == before


@pytest.mark.parametrize("kind", ["prepare", "stream"])
def test_overwrite_replaces_only_a_dataset_written_by_embdim(tmp_path, kind):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "schema.json").write_text("{}")  # looks like a dataset, but no content hash
    run = (lambda: prepare("csv", [_csv(tmp_path / "r.csv")], out, overwrite=True, **CSV_OPTIONS)) \
        if kind == "prepare" else \
        (lambda: prepare_stream("movielens", [_ratings(tmp_path / "ml")], out, overwrite=True,
                                quiet=True))
    with pytest.raises(DataError, match="replaces only a dataset written by embdim"):
        run()
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    (out / "schema.json").unlink()
    run()  # an empty folder is fine
    run()  # and so is replacing what embdim wrote
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_prepare_refuses_an_output_that_holds_an_input(tmp_path):
    (tmp_path / "data").mkdir()
    src = _csv(tmp_path / "data" / "r.csv")
    with pytest.raises(DataError, match="is or contains an input"):
        prepare("csv", [src], tmp_path / "data", overwrite=True, **CSV_OPTIONS)
    assert src.exists()


# ---- temporary folders (item 9) ----------------------------------------------------------------

def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _sibling(parent: Path, name: str, owner: dict | None) -> Path:
    folder = parent / name
    folder.mkdir()
    (folder / "codes.bin").write_bytes(b"\0" * 100)
    if owner is not None:
        (folder / OWNER_FILE).write_text(json.dumps(owner))
    return folder


@pytest.mark.parametrize("kind", ["prepare", "stream"])
def test_a_later_preparation_removes_stale_temporary_folders_of_its_own_making(tmp_path, kind):
    host = socket.gethostname()
    stale = [_sibling(tmp_path, f".out.{k}-abcd1234", {"pid": _dead_pid(), "host": host})
             for k in ("prepare", "tmp", "old", "stream", "work")]
    running = _sibling(tmp_path, ".out.prepare-live0001", {"pid": os.getppid(), "host": host})
    elsewhere = _sibling(tmp_path, ".out.prepare-other001", {"pid": _dead_pid(), "host": "x" + host})
    foreign = _sibling(tmp_path, ".out.prepare-foreign1", None)
    if kind == "prepare":
        prepare("csv", [_csv(tmp_path / "r.csv")], tmp_path / "out", **CSV_OPTIONS)
    else:
        prepare_stream("movielens", [_ratings(tmp_path / "ml")], tmp_path / "out", quiet=True)
    assert not any(p.exists() for p in stale)
    assert running.exists() and elsewhere.exists() and foreign.exists()
    assert not (tmp_path / "out" / OWNER_FILE).exists()


def test_sigterm_during_prepare_removes_the_temporary_folder(tmp_path):
    src = tmp_path / "big.csv"
    with open(src, "w") as f:
        f.write("label,a,b\n")
        for start in range(0, 400_000, 50_000):
            f.write("".join(f"{i % 2},x{i % 1000},y{i % 77}\n" for i in range(start, start + 50_000)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "embdim", "--quiet", "prepare", "csv", str(src), "--out", str(out),
           "--label", "label", "--categorical", "a,b", "--min-count", "1", "--chunk-rows", "2000"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.prepare-*")) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.skip("prepare finished before it could be signalled")
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.startswith("embdim: terminated") and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.csv"]


def test_stream_and_dataset_folders_get_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        prepare_stream("movielens", [_ratings(tmp_path / "ml")], tmp_path / "s", quiet=True)
        prepare("csv", [_csv(tmp_path / "r.csv")], tmp_path / "p", **CSV_OPTIONS)
    finally:
        os.umask(old)
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "p").stat().st_mode & 0o777 == 0o755
