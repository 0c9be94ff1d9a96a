"""Timing and peak memory of a zero-argument callable on CPU or CUDA.

Timing uses ``torch.utils.benchmark.Timer``, which synchronises the accelerator around each
timed block. After the caller's warm-up (``warm_up``) we size blocks so that fast calls are not
dominated by timer overhead, and collect at least ``min_repeats`` blocks for the spread.

Peak memory is the growth above what was allocated before the call (inputs excluded):
on CUDA ``torch.cuda.max_memory_allocated``; on CPU the larger of two lower bounds of the true
peak, from two calls: PyTorch's allocator traffic recorded by the profiler (``profile_memory``),
and the growth of the process's resident high-water mark (Linux), which also sees scratch that
C++ kernels allocate outside PyTorch's allocator (``std::vector``) or on worker threads.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import statistics
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.utils.benchmark as torch_benchmark


@dataclass
class Timing:
    times_s: list[float]  # seconds per call, one entry per repeat

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def iqr_s(self) -> float:
        if len(self.times_s) < 2:
            return 0.0
        quartiles = statistics.quantiles(self.times_s, n=4, method="inclusive")
        return quartiles[2] - quartiles[0]

    def to_json(self) -> dict:
        return {"median_s": self.median_s, "iqr_s": self.iqr_s, "min_s": min(self.times_s),
                "max_s": max(self.times_s), "repeats": len(self.times_s), "times_s": self.times_s}


@dataclass
class TimingPolicy:
    min_repeats: int = 3
    min_total_s: float = 1.0  # keep repeating until this much time is spent
    block_s: float = 0.05  # calls per repeat are batched up to about this long
    warmup_calls: int = 1  # untimed calls before memory and time are measured


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(fn: Callable[[], object], device: torch.device, policy: TimingPolicy) -> None:
    for _ in range(policy.warmup_calls):
        fn()
    synchronize(device)


def time_callable(fn: Callable[[], object], policy: TimingPolicy) -> Timing:
    timer = torch_benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    single = timer.timeit(1).mean  # untimed: sizes the blocks
    calls_per_block = max(1, int(policy.block_s / max(single, 1e-9)))
    times: list[float] = []
    while len(times) < policy.min_repeats or sum(times) * calls_per_block < policy.min_total_s:
        times.append(timer.timeit(calls_per_block).mean)
    return Timing(times)


@dataclass
class PeakMemory:
    bytes: int  # the figure reported
    sources: dict = field(default_factory=dict)  # each measurement that went into it


def peak_memory(fn: Callable[[], object], device: torch.device, reset: Callable[[], None] = lambda: None) -> PeakMemory:
    """``reset`` runs before each measured call, e.g. to drop gradients left by an earlier call."""
    reset()
    if device.type == "cuda":
        gc.collect()  # as in allocator_peak
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        return PeakMemory(peak, {"cuda_max_memory_allocated": peak})
    sources = {"torch_allocator_peak": allocator_peak(fn)}
    # A second, unprofiled call for the resident high-water mark: the profiler's own records
    # would otherwise count as growth.
    reset()
    _release_free_heap()
    rss_before = _resident_high_water_reset()
    fn()
    rss_peak = _resident_high_water()
    if rss_before is not None and rss_peak is not None:
        sources["resident_high_water_growth"] = max(0, rss_peak - rss_before)
    return PeakMemory(max(sources.values()), sources)


def allocator_peak(fn: Callable[[], object]) -> int:
    """Bytes PyTorch's CPU allocator holds at most during one call of ``fn`` beyond what it held
    before (the profiler's record of its traffic): one call, where ``peak_memory`` makes two."""
    # Garbage of earlier calls collected during this one upset the record: triton's 32x32 layer
    # came out at 12.8 MiB after the 64x64 layer, 43.0 alone (test_backward_memory.py).
    gc.collect()
    with _quiet_native_stderr(), torch.autograd.profiler.profile(profile_memory=True) as prof:
        fn()
    events = [e for e in prof.kineto_results.events() if e.name() == "[memory]" and e.device_type().name == "CPU"]
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def _proc_status_kib(field_name: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _resident_high_water_reset() -> Optional[int]:
    """Resets VmHWM to the current RSS (Linux >= 4.0) and returns that RSS in bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return None
    rss = _proc_status_kib("VmRSS")
    return None if rss is None else rss * 1024


def _resident_high_water() -> Optional[int]:
    hwm = _proc_status_kib("VmHWM")
    return None if hwm is None else hwm * 1024


def _release_free_heap() -> None:
    # Memory freed by earlier calls but kept by malloc would be reused without raising the
    # resident high-water mark; hand it back to the OS first (glibc only).
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).malloc_trim(0)


@contextlib.contextmanager
def _quiet_native_stderr():
    """Kineto writes two log lines to file descriptor 2 per profiling session; they would break
    the progress bar, so fd 2 points to /dev/null while the profiler runs."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
