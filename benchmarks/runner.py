"""Runs the measurements: every (dtype, case, op) group measures the op's lower bound and each
backend side by side, then derives throughput and ratios from the measured medians."""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass, replace
from typing import Optional

import torch

import lc4_kernels as K

from . import check, measure, metrics, workloads
from .shapes import Case


@dataclass
class Group:
    dtype: torch.dtype
    case: Case
    op: str
    backends: list[str]  # runnable here, reference first
    skipped: list[dict]


@dataclass
class Settings:
    device: torch.device
    dtypes: list[torch.dtype]
    cases: list[Case]
    backends: list[str]
    policy: measure.TimingPolicy
    scaling_cases: list[Case]
    # Labels --check rejected: backends leave `backends`; a rejected lower bound is not measured,
    # so no ratio is taken against it.
    rejected: frozenset[str] = frozenset()


def unsupported_reason(name: str, device: torch.device, dtype: torch.dtype, head_dim: Optional[int]) -> Optional[str]:
    return K.get_backend(name).unsupported_reason(device, dtype, head_dim)


def plan(settings: Settings) -> list[Group]:
    groups = []
    for dtype in settings.dtypes:
        for case in settings.cases:
            for op in workloads.OPS:
                head_dim = case.head_dim if op == workloads.ATTENTION else None
                runnable, skipped = [], []
                for name in settings.backends:
                    reason = unsupported_reason(name, settings.device, dtype, head_dim)
                    if reason is None:
                        runnable.append(name)
                    else:
                        skipped.append({"backend": name, "op": op, "case": case.name, "dtype": str(dtype), "reason": reason})
                groups.append(Group(dtype, case, op, runnable, skipped))
    return groups


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)) or "can't allocate memory" in str(exc) or "out of memory" in str(exc)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_workload(workload: workloads.Workload, device: torch.device, policy: measure.TimingPolicy) -> dict:
    """Per mode: warm-up, peak memory (one call, two on CPU), then the timed repeats."""
    result = {"fwd": None, "fwd_bwd": None, "peak_memory_bytes": {}, "peak_memory_sources": {}, "error": None}
    for mode, fn in (("fwd", workload.forward), ("fwd_bwd", workload.forward_backward)):
        try:
            measure.warm_up(fn, device, policy)
            memory = measure.peak_memory(fn, device, reset=workload.clear_grads)
            result["peak_memory_bytes"][mode] = memory.bytes
            result["peak_memory_sources"][mode] = memory.sources
            result[mode] = measure.time_callable(fn, policy).to_json()
        except (RuntimeError, MemoryError) as exc:
            if not _is_out_of_memory(exc):
                raise
            result["error"] = f"{mode}: out of memory"
            _release(device)
            break
    workload.clear_grads()
    return result


def _ratio(numerator: Optional[dict], denominator: Optional[dict]) -> Optional[float]:
    if not numerator or not denominator:
        return None
    return numerator["median_s"] / denominator["median_s"]


def add_derived(rows: list[dict]) -> None:
    """Throughput and ratios of one group, from the medians measured in this run."""
    reference = next((r for r in rows if r["label"] == "reference"), None)
    bound = next((r for r in rows if r["kind"] == "lower_bound"), None)
    for row in rows:
        work = row["work"]
        row["throughput"] = {mode: (work[mode] / row[mode]["median_s"] / work["scale"] if row[mode] else None)
                             for mode in ("fwd", "fwd_bwd")}
        row["speedup_vs_reference"] = {mode: _ratio(reference and reference[mode], row[mode]) for mode in ("fwd", "fwd_bwd")}
        row["time_over_lower_bound"] = {mode: _ratio(row[mode], bound and bound[mode]) for mode in ("fwd", "fwd_bwd")}


def run_group(group: Group, settings: Settings, progress) -> list[dict]:
    device = settings.device
    inputs = check.make_inputs(group.op, group.case, device, group.dtype)
    auto_choice = K.backend_for(group.op, *workloads.op_arguments(group.op, inputs))
    element_size = torch.empty((), dtype=group.dtype).element_size()
    rows = []
    for workload in workloads.workloads_for(group.op, inputs, group.backends):
        if workload.label in settings.rejected:
            continue
        progress.set_postfix_str(f"{group.op} {group.case.name} {workload.label}", refresh=False)
        started = time.perf_counter()
        ran = None if workload.is_lower_bound else K.backend_for(
            group.op, *workloads.op_arguments(group.op, inputs), backend=workload.label)
        row = {"op": group.op, "case": group.case.name, "dtype": str(group.dtype), "label": workload.label,
               "kind": "lower_bound" if workload.is_lower_bound else "backend", "ran_backend": ran,
               "auto_backend": auto_choice, "work": metrics.work_for(group.op, group.case, element_size),
               **measure_workload(workload, device, settings.policy)}
        row["wall_s"] = time.perf_counter() - started  # the whole measurement, for budgeting runs
        rows.append(row)
        progress.update()
    del inputs
    _release(device)
    add_derived(rows)
    return rows


def run_memory_scaling(settings: Settings, progress) -> dict:
    """Peak memory of tda_attention forward+backward as Nq grows at fixed Nk (first dtype)."""
    device, dtype = settings.device, settings.dtypes[0]
    points = []
    for case in settings.scaling_cases:
        inputs = check.make_inputs(workloads.ATTENTION, case, device, dtype)
        runnable = [b for b in settings.backends if unsupported_reason(b, device, dtype, case.head_dim) is None]
        for workload in workloads.workloads_for(workloads.ATTENTION, inputs, runnable):
            progress.set_postfix_str(f"memory nq={case.nq} {workload.label}", refresh=False)
            entry = {"label": workload.label, "nq": case.nq, "peak_bytes": None, "error": None}
            try:
                if device.type == "cuda":  # first calls may compile or autotune
                    measure.warm_up(workload.forward_backward, device, replace(settings.policy, warmup_calls=1))
                memory = measure.peak_memory(workload.forward_backward, device, reset=workload.clear_grads)
                entry["peak_bytes"], entry["sources"] = memory.bytes, memory.sources
            except (RuntimeError, MemoryError) as exc:
                if not _is_out_of_memory(exc):
                    raise
                entry["error"] = "out of memory"
            workload.clear_grads()
            points.append(entry)
            progress.update()
        del inputs
        _release(device)
    base = settings.scaling_cases[0]
    return {"dtype": str(dtype), "cases": [c.describe() for c in settings.scaling_cases],
            "nk": base.nk, "nq": [c.nq for c in settings.scaling_cases], "points": points,
            "growth_bytes_per_query": growth_per_query(points),
            "score_row_bytes": base.nk * base.heads * torch.empty((), dtype=dtype).element_size()}


def growth_per_query(points: list[dict]) -> dict[str, Optional[float]]:
    """Least-squares slope of peak bytes against Nq, per label."""
    slopes = {}
    for label in dict.fromkeys(p["label"] for p in points):
        xy = [(p["nq"], p["peak_bytes"]) for p in points if p["label"] == label and p["peak_bytes"] is not None]
        if len(xy) < 2:
            slopes[label] = None
            continue
        mean_x = sum(x for x, _ in xy) / len(xy)
        mean_y = sum(y for _, y in xy) / len(xy)
        slopes[label] = (sum((x - mean_x) * (y - mean_y) for x, y in xy)
                         / sum((x - mean_x) ** 2 for x, _ in xy))
    return slopes


def run_checks(settings: Settings, progress) -> list[check.CheckResult]:
    results = []
    for group in plan(settings):
        progress.set_postfix_str(f"check {group.op} {group.case.name}", refresh=False)
        results.extend(check.check_op(group.op, group.case, settings.device, group.dtype, group.backends))
        _release(settings.device)
        progress.update()
    return results
