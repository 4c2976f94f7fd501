"""Issue 15, item 3: a full disk (here: a file-size limit, RLIMIT_FSIZE, which needs no root, or a
failing ``posix_fallocate``) ends ``prepare``, ``stream prepare`` and ``run`` with one
``embdim: error:`` line, no traceback and no temporary folder; the same command succeeds (or
resumes) once there is room."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from embdim.data.preparation import prepare
from embdim.errors import DiskFullError

LIMIT_BYTES = 100_000


def _embdim(args: list[str], cwd: Path, limit: int | None = LIMIT_BYTES) -> subprocess.CompletedProcess:
    def set_limit() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "embdim", "--quiet", *args], cwd=cwd,
                          preexec_fn=set_limit, capture_output=True, text=True, timeout=300)


def _assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("embdim: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert all(w in proc.stderr for w in words), proc.stderr


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


def test_prepare_and_stream_prepare_on_a_full_disk(tmp_path):
    (tmp_path / "r.csv").write_text("label,a,b\n" + "".join(
        f"{i % 2},x{i % 300},y{i % 7}\n" for i in range(40_000)))
    args = ["prepare", "csv", "r.csv", "--out", "p", "--label", "label", "--categorical", "a,b"]
    _assert_one_line_error(_embdim(args, tmp_path), "file too large while writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]
    assert _embdim(args, tmp_path, limit=None).returncode == 0

    ml = tmp_path / "ml"
    ml.mkdir()
    (ml / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{i % 97},{i % 89},{1 + i % 5},{1000 + i}\n" for i in range(20_000)))
    args = ["stream", "prepare", "movielens", "ml", "--out", "s"]
    _assert_one_line_error(_embdim(args, tmp_path), "file too large while writing")
    assert not (tmp_path / "s").exists() and _hidden(tmp_path) == []
    assert _embdim(args, tmp_path, limit=None).returncode == 0


def test_a_run_on_a_full_disk_stops_in_one_line_and_resumes_later(small, tmp_path):
    args = ["run", "--set", f"data.path={small}", "--set", "model.name=fm", "--set",
            "train.epochs=1", "--out", "run"]
    _assert_one_line_error(_embdim(args, tmp_path, limit=40_000), "while writing run/checkpoints/")
    assert _hidden(tmp_path / "run") == []  # no half-written checkpoint
    assert _embdim([*args, "--resume"], tmp_path, limit=None).returncode == 0
    assert (tmp_path / "run" / "metrics.json").exists()


def test_space_for_the_arrays_is_reserved_before_they_are_written(tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    src = tmp_path / "r.csv"
    src.write_text("label,a\n" + "".join(f"{i % 2},x{i % 5}\n" for i in range(1000)))
    with pytest.raises(DiskFullError,
                       match=r"no space left on device while writing .*train.x.npy \(0.0 MB needed\)"):
        prepare("csv", [src], tmp_path / "out", label="label", categorical=["a"], min_count=1,
                quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]
