"""The PNG: forward+backward time and peak memory per case (cases in resolution order) for each
backend and lower bound, and the memory-scaling curve."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

from .render import MIB  # noqa: E402


def _series(doc: dict, op: str, value) -> dict[str, tuple[list[int], list[float]]]:
    """label -> (case positions, values) for one op, one line per (backend, dtype)."""
    case_names = [c["name"] for c in doc["shapes"]]
    multi_dtype = len(doc["settings"]["dtypes"]) > 1
    series: dict[str, tuple[list[int], list[float]]] = {}
    for row in doc["results"]:
        y = value(row) if row["op"] == op else None
        if y is None:
            continue
        label = row["label"] + (" (bound)" if row["kind"] == "lower_bound" else "")
        if multi_dtype:
            label += " " + row["dtype"].removeprefix("torch.")
        xs, ys = series.setdefault(label, ([], []))
        xs.append(case_names.index(row["case"]))
        ys.append(y)
    return series


def _case_axis(ax, doc: dict, title: str, ylabel: str, series: dict) -> None:
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", linestyle="--" if "(bound)" in label else "-", label=label)
    names = [c["name"] for c in doc["shapes"]]
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if series:
        ax.legend(fontsize=7)


def write_plot(doc: dict, path: Path) -> None:
    fig, axes = plt.subplots(3, 2, figsize=(12, 12), constrained_layout=True)
    for row_axes, op in zip(axes[:2], ("tda_attention", "trilinear_sample")):
        time_series = _series(doc, op, lambda r: r["fwd_bwd"]["median_s"] * 1e3 if r["fwd_bwd"] else None)
        memory_series = _series(doc, op, lambda r: (r["peak_memory_bytes"].get("fwd_bwd") or 0) / MIB or None)
        _case_axis(row_axes[0], doc, f"{op}: forward+backward time", "ms (median)", time_series)
        _case_axis(row_axes[1], doc, f"{op}: forward+backward peak memory", "MiB above inputs", memory_series)
    forward_series = _series(doc, "tda_attention", lambda r: r["fwd"]["median_s"] * 1e3 if r["fwd"] else None)
    _case_axis(axes[2][0], doc, "tda_attention: forward time", "ms (median)", forward_series)
    scaling_axis = axes[2][1]
    scaling = doc.get("memory_scaling")
    if scaling:
        for label in scaling["growth_bytes_per_query"]:
            points = [p for p in scaling["points"] if p["label"] == label and p["peak_bytes"]]
            scaling_axis.plot([p["nq"] for p in points], [p["peak_bytes"] / MIB for p in points], marker="o",
                              linestyle="--" if label == "sdpa" else "-", label=label)
        scaling_axis.set_xscale("log", base=2)
        scaling_axis.set_yscale("log")
        scaling_axis.set_xlabel("Nq (queries)")
        scaling_axis.set_ylabel("MiB above inputs")
        scaling_axis.set_title(f"tda_attention forward+backward peak memory vs Nq (Nk = {scaling['nk']})", fontsize=9)
        scaling_axis.grid(True, which="both", alpha=0.3)
        scaling_axis.legend(fontsize=7)
    else:
        scaling_axis.set_axis_off()
    fig.suptitle(f"lc4_kernels on {doc['environment']['device']['name']}", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
