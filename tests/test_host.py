"""The trainer and the host: bf16 autocast only on CPUs that compute bf16 in hardware, freed
training buffers kept in the process (glibc mallopt)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from embdim.config import TrainConfig
from embdim.data.dataset import PreparedDataset
from embdim.nn.models import build_model
from embdim.train import host
from embdim.train.trainer import Trainer


def _trainer(planted, amp: bool, messages: list[str]) -> Trainer:
    ds = PreparedDataset(planted)
    model = build_model("deepfm", ds.schema, dim=4, options={"mlp": [8]})
    return Trainer(model, ds, TrainConfig(epochs=1, batch_size=500, amp=amp), quiet=True,
                   log=messages.append)


def test_amp_falls_back_to_fp32_with_a_warning_on_cpus_without_bf16(planted, monkeypatch):
    monkeypatch.setattr("embdim.train.trainer.cpu_has_fast_bf16", lambda: False)
    messages: list[str] = []
    with pytest.warns(UserWarning, match="neither AVX512-BF16 nor AMX"):
        trainer = _trainer(planted, True, messages)
    assert trainer.amp is False and "training in fp32" in messages[0]
    with trainer._autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_amp_stays_on_where_the_cpu_has_bf16(planted, monkeypatch):
    monkeypatch.setattr("embdim.train.trainer.cpu_has_fast_bf16", lambda: True)
    messages: list[str] = []
    trainer = _trainer(planted, True, messages)
    assert trainer.amp is True and not [m for m in messages if "amp" in m]
    with trainer._autocast():
        assert torch.is_autocast_enabled("cpu")
    assert _trainer(planted, False, messages).amp is False


def test_cpu_bf16_detection_agrees_with_the_kernel_flags():
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    assert host.cpu_has_fast_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_memory_is_kept_in_the_process_unless_the_user_opts_out(monkeypatch):
    try:
        ctypes.CDLL("libc.so.6").mallopt  # noqa: B018
    except (OSError, AttributeError):
        pytest.skip("not glibc")
    calls = []

    def mallopt(param, value):  # records what the C function would be told
        calls.append((param, value))
        return 1

    monkeypatch.setattr(host.ctypes, "CDLL", lambda name: SimpleNamespace(mallopt=mallopt))
    monkeypatch.setattr(host, "_applied", None)
    assert host.keep_memory_in_process() is True
    assert dict(calls) == {-3: 32 * 1024 * 1024, -1: 2**31 - 1, -2: 512 * 1024**2, -4: 0}
    assert host.keep_memory_in_process() is True and len(calls) == 4  # once per process
    monkeypatch.setattr(host, "_applied", None)
    monkeypatch.setenv("EMBDIM_MALLOC", "system")
    assert host.keep_memory_in_process() is False and len(calls) == 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_buffers_above_the_mmap_threshold_are_reused_without_page_faults():
    """After keep_memory_in_process a 64 MB buffer (a 1M-id table's gradient, above glibc's
    largest mmap threshold) freed and allocated again is not page-faulted in again: per
    allocation, once the heap has grown, the median count of page faults is ~0 instead of one per
    4 KiB page (16,384; the heap may still grow once in a while, hence the median)."""
    code = textwrap.dedent("""
        import resource, torch
        from embdim.train.host import keep_memory_in_process
        assert keep_memory_in_process()
        n = 64 * 1024 * 1024 // 4
        for _ in range(4):
            torch.ones(n)  # the heap grows
        faults = []
        for _ in range(9):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            torch.ones(n)  # allocated, written, freed
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        print(sorted(faults)[4])
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "EMBDIM_MALLOC"))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) < 16384 // 20, int(proc.stdout)


def test_searches_keep_memory_in_the_process_like_the_trainer(monkeypatch, planted):
    """A search runs its own loop before any Trainer exists (AutoDim, NIS, ...): it applies the
    same memory setting."""
    from embdim.data.dataset import PreparedDataset
    from embdim.search import make_method

    calls = []
    monkeypatch.setattr(host, "keep_memory_in_process", lambda: calls.append(1) or True)
    method = make_method({"name": "autodim", "epochs": 1, "max_steps": 3, "pretrain_steps": 1,
                          "candidates": [2, 4]})
    method.search(PreparedDataset(planted), model={"name": "fm"}, train={"batch_size": 256})
    assert calls
