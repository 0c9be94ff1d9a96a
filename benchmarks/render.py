"""The Markdown report, from the JSON document that ``report.py`` writes."""
from __future__ import annotations

from typing import Optional

MIB = 2 ** 20
MODES = ("fwd", "fwd_bwd")


def _significant(x: Optional[float], digits: int = 3) -> str:
    if x is None:
        return "–"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


def _time(timing: Optional[dict]) -> str:
    if not timing:
        return "–"
    return f"{_significant(timing['median_s'] * 1e3)} ±{_significant(timing['iqr_s'] * 1e3, 2)}"


def _pair(values: dict) -> str:
    return " / ".join(_significant(values.get(mode)) for mode in MODES)


def _mib(n: Optional[float]) -> str:
    return "–" if n is None else _significant(n / MIB)


def _label(row: dict) -> str:
    return f"{row['label']} (lower bound)" if row["kind"] == "lower_bound" else row["label"]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def _environment_lines(doc: dict) -> list[str]:
    env, settings = doc["environment"], doc["settings"]
    device = env["device"]
    details = (f"compute capability {device['compute_capability']}, {device['memory_bytes'] / 2 ** 30:.0f} GiB"
               if device["type"] == "cuda" else f"{device['threads']} threads, {device['cpu_capability']}")
    if env.get("load_average_1m") is not None:
        details += f"; load average {env['load_average_1m']:.2f} at the start"
    dirty = " (with uncommitted changes)" if env["commit_dirty"] else ""
    checked = ("yes, every backend and lower bound against the float64 reference" if settings["check"]
               else "no (run with `--check`)")
    return [f"- Device: {device['name']} ({details})",
            f"- torch {env['torch']}, Triton {env['triton'] or 'not installed'}, CUDA {env['cuda'] or 'none'}",
            f"- Commit {env['commit'] or 'unknown'}{dirty}, {env['date']}",
            f"- Command: `{env['command']}`",
            f"- Backends measured: {', '.join(settings['backends_measured'])}; dtypes: "
            f"{', '.join(d.removeprefix('torch.') for d in settings['dtypes'])}",
            f"- Outputs checked before timing: {checked}",
            *(["- **Interrupted**: the run was stopped before the end; only the rows below were measured"]
              if doc.get("interrupted") else [])]


def _case_lookup(doc: dict) -> dict:
    return {c["name"]: c for c in doc["shapes"]}


def _attention_section(rows: list[dict], cases: dict) -> list[str]:
    body = []
    for r in rows:
        c = cases[r["case"]]
        body.append([r["case"], str(c["nq"]), str(c["nk"]), str(c["head_dim"]), _label(r), _time(r["fwd"]),
                     _time(r["fwd_bwd"]), _mib(r["peak_memory_bytes"].get("fwd_bwd")), _pair(r["throughput"]),
                     _pair(r["speedup_vs_reference"]), _pair(r["time_over_lower_bound"]), r["error"] or ""])
    return _table(["case", "Nq", "Nk", "d", "backend", "fwd ms", "fwd+bwd ms", "peak MiB fwd+bwd",
                   "TFLOP/s fwd / fwd+bwd", "speed-up vs reference fwd / fwd+bwd",
                   "time / SDPA fwd / fwd+bwd", "note"], body)


def _sample_section(rows: list[dict], cases: dict) -> list[str]:
    body = []
    for r in rows:
        c = cases[r["case"]]
        body.append([r["case"], f"{c['frames']}x{c['height']}x{c['width']}", str(c["nk"] * c["groups"]),
                     str(c["channels"] // c["groups"]), _label(r), _time(r["fwd"]), _time(r["fwd_bwd"]),
                     _mib(r["peak_memory_bytes"].get("fwd_bwd")), _pair(r["throughput"]),
                     _pair(r["speedup_vs_reference"]), _pair(r["time_over_lower_bound"]), r["error"] or ""])
    return _table(["case", "volume TxHxW", "points", "channels", "backend", "fwd ms", "fwd+bwd ms",
                   "peak MiB fwd+bwd", "GB/s fwd / fwd+bwd", "speed-up vs reference fwd / fwd+bwd",
                   "time / grid_sample fwd / fwd+bwd", "note"], body)


def _memory_scaling_section(scaling: dict) -> list[str]:
    first = scaling["cases"][0]
    lines = [f"tda_attention forward+backward, {scaling['dtype'].removeprefix('torch.')}, k/v map {first['frames']}x{first['height']}x"
             f"{first['width']}, {first['heads']} heads, d = {first['head_dim']}, Nk = {scaling['nk']}. "
             f"Peak MiB above the inputs; growth per query is the least-squares slope, also given in "
             f"rows of attention scores ({scaling['score_row_bytes']} bytes = Nk x heads x element size).", ""]
    body = []
    for label, slope in scaling["growth_bytes_per_query"].items():
        by_nq = {p["nq"]: p for p in scaling["points"] if p["label"] == label}
        cells = [(_mib(by_nq[nq]["peak_bytes"]) if by_nq[nq]["peak_bytes"] is not None else by_nq[nq]["error"])
                 for nq in scaling["nq"]]
        rows = None if slope is None else slope / scaling["score_row_bytes"]
        body.append([label, *cells, "–" if slope is None else f"{slope:.0f} B", _significant(rows, 2)])
    return lines + _table(["backend", *(f"Nq={nq}" for nq in scaling["nq"]), "growth per query", "in score rows"], body)


def _measurement_notes(doc: dict) -> list[str]:
    device_type = doc["environment"]["device"]["type"]
    memory = ("`torch.cuda.max_memory_allocated` minus what was allocated before the call" if device_type == "cuda"
              else "the larger of PyTorch's allocator peak (profiler, `profile_memory`) and the growth of the "
                   "process's resident high-water mark (sees C++ scratch outside PyTorch's allocator)")
    return ["- Times: median ± interquartile range over the repeats, in ms; warm-up calls first; "
            "accelerator synchronised around every timed block (`torch.utils.benchmark`).",
            f"- Peak memory: growth above the inputs during one call: {memory}.",
            "- TFLOP/s: 4·Nq·Nk·d per head forward, 2.5x that backward (sampling and softmax not counted). "
            "GB/s: ideal gather traffic (coordinates, 8 corner vectors per point, output; backward likewise), "
            "see `benchmarks/metrics.py`.",
            "- Speed-up vs reference: reference time / backend time (higher is better). Time / lower bound: "
            "backend time / bound time (1.0 = as fast as the bound). All from the same run.",
            "- Lower bounds: SDPA (backend chosen by PyTorch) on k~/v~ sampled beforehand; "
            "`F.grid_sample` (5-D, zeros, align_corners=True) on inputs converted beforehand.",
            "- Coordinates are float32; key points are a reference grid (strides Nrs, Nrt) plus offsets "
            "(see `benchmarks/shapes.py`)."]


def _triton_configs_section(rows: list[dict]) -> list[str]:
    lines = ["Per kernel and autotuning key (key arguments, then the tensors' dtypes): the candidate the "
             "autotuner chose, or the one fixed configuration.", "",
             "| kernel | key | configuration | autotuned |", "|---|---|---|---|"]
    for row in rows:
        key = ", ".join(row["key"]) if row["key"] is not None else "(every launch)"
        config = ", ".join(f"{name}={value}" for name, value in row["config"].items())
        lines.append(f"| {row['kernel']} | {key} | {config} | {'yes' if row['autotuned'] else 'no'} |")
    return lines


def markdown(doc: dict, plot_name: Optional[str]) -> str:
    lines = [f"# lc4_kernels benchmark: {doc['environment']['device']['name']}", "", *_environment_lines(doc), ""]
    cases = _case_lookup(doc)
    for dtype in doc["settings"]["dtypes"]:
        for op, section in (("tda_attention", _attention_section), ("trilinear_sample", _sample_section)):
            rows = [r for r in doc["results"] if r["op"] == op and r["dtype"] == dtype]
            if rows:
                lines += [f"## {op}, {dtype.removeprefix('torch.')}", "", *section(rows, cases), ""]
    if doc.get("memory_scaling"):
        lines += ["## Memory scaling", "", *_memory_scaling_section(doc["memory_scaling"]), ""]
    if doc["rejected"]:
        lines += ["## Rejected by --check (not reported)", ""]
        for label, failures in doc["rejected"].items():
            worst = max(failures, key=lambda f: f["worst_error"])
            lines.append(f"- {label}: {len(failures)} failing case(s); worst {worst['op']} {worst['case']} "
                         f"{worst['worst_tensor']}: relative error {worst['worst_error']:.3g} > {worst['tolerance']:g}")
        lines.append("")
    if doc["skipped"]:
        lines += ["## Skipped", ""]
        reasons = {}
        for s in doc["skipped"]:
            reasons.setdefault((s["backend"], s["reason"]), []).append(f"{s['op']} {s['case']} {s['dtype']}")
        lines += [f"- {backend}: {reason} ({len(where)} case(s))" for (backend, reason), where in reasons.items()]
        lines.append("")
    if doc.get("triton_configs"):
        lines += ["## Triton launch configurations", "", *_triton_configs_section(doc["triton_configs"]), ""]
    lines += ["## How it was measured", "", *_measurement_notes(doc), ""]
    if plot_name:
        lines += [f"![time and memory per case and backend]({plot_name})", ""]
    return "\n".join(lines)
