"""What the host CPU and C library need from the trainer: bf16 capability and memory reuse.

* :func:`cpu_has_fast_bf16`: whether bfloat16 autocast (``train.amp``) can be faster than fp32 on
  this CPU. Without AVX512-BF16 or AMX the bf16 matrix products are emulated and a training step
  is several times slower (measured 8x on an AVX2 CPU), so the trainer runs fp32 there and says so.
* :func:`keep_memory_in_process`: a training step allocates and frees the same 8-70 MB buffers
  every step (and a table's dense gradient, 64 MB at 1M ids x 16). glibc serves blocks of that
  size with ``mmap`` and returns them to the kernel on ``free``, so every step page-faults them
  back in (millions of faults per epoch, and a step cost that grows with the embedding tables).
  Serving every block from the heap (no ``mmap``: ``M_MMAP_MAX`` 0; the mmap threshold alone
  stops at 32 MB), never trimming the heap and padding its growth keeps freed memory in the
  process for reuse, the effect of ``MALLOC_MMAP_MAX_=0 MALLOC_MMAP_THRESHOLD_=33554432
  MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=536870912`` set at run time with
  ``mallopt``. The process then keeps its peak heap until it exits. Set
  ``EMBDIM_MALLOC=system`` to leave the C library's defaults alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import torch

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's largest on 64-bit (4 MiB x sizeof(long))
_TRIM_THRESHOLD = 64 * 1024**3
_TOP_PAD = 512 * 1024**2
_applied: bool | None = None


def cpu_has_fast_bf16() -> bool:
    """True if the CPU has AVX512-BF16 or AMX (bf16 products in hardware)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    found = [getattr(torch.cpu, name, None) for name in checks]
    if any(f is not None for f in found):
        return any(bool(f()) for f in found if f is not None)
    try:  # older torch: the kernel's CPU flags
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def keep_memory_in_process() -> bool:
    """Tell glibc to keep freed training buffers for reuse (see the module docstring). Returns
    whether the settings are in effect; a no-op off glibc or with ``EMBDIM_MALLOC=system``."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("EMBDIM_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, min(_TRIM_THRESHOLD, 2**31 - 1)),
        (_M_TOP_PAD, _TOP_PAD), (_M_MMAP_MAX, 0)))
    return _applied
