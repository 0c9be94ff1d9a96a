"""The benchmark report, the project's main job (``make bench``)::

    python -m benchmarks.report [--quick] [--shapes SET|CASE,...] [--backends a,b] [--dtype float32,...]
                                [--check] [--out DIR] [--device cpu|cuda]

For every backend available here it measures both public ops at a named shape set (default:
the SD1.5 TDA layers on a GPU, the CPU set otherwise), side by side with the reference path
and the lower bounds, then a memory-scaling sweep. It prints the Markdown table and writes
``<out>/<device-slug>/report.{md,json,png}`` (``report-quick.*`` for ``--quick``,
``report-custom.*`` when shapes, backends or dtypes were chosen by hand).

``--check`` first verifies every backend against the reference on every benchmarked shape; a
backend that disagrees is left out of the report and the command exits with status 1.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch
import lc4_kernels as K

from . import environment, measure, render, runner, shapes

try:
    from tqdm import tqdm
except ImportError:  # an offline image without tqdm still gets its report, without a progress bar
    tqdm = None

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}
# bfloat16 on the CPU: what torch.autocast("cpu") runs in.
DEFAULT_DTYPES = {"cpu": "float32,bfloat16", "cuda": "float16,bfloat16"}
TIMING = {
    # On CPU the memory measurement's two calls precede the timing and serve as its warm-up.
    "quick": measure.TimingPolicy(min_repeats=3, min_total_s=0.02, block_s=0.005, warmup_calls=0),
    "cpu": measure.TimingPolicy(min_repeats=5, min_total_s=0.5, block_s=0.05, warmup_calls=0),
    "cuda": measure.TimingPolicy(min_repeats=10, min_total_s=0.5, block_s=0.02, warmup_calls=3),
}
SCHEMA_VERSION = 1


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few repeats (CI smoke test)")
    parser.add_argument("--shapes", help=f"comma-separated shape sets ({', '.join(shapes.SHAPE_SETS)}) or case names")
    parser.add_argument("--backends", help="comma-separated backends (default: every available one that "
                                           "auto may choose); "
                                           "'reference' is always measured, as the baseline of the ratios")
    parser.add_argument("--dtype", help="comma-separated dtypes (default: float32,bfloat16 on CPU, float16,bfloat16 on CUDA)")
    parser.add_argument("--check", action="store_true", help="verify every backend against the reference first")
    parser.add_argument("--out", type=Path, default=environment.DEFAULT_RESULTS_ROOT,
                        help="results root; files go to OUT/<device-slug>/ (default: benchmarks/results)")
    parser.add_argument("--device", type=_device, help="cpu or cuda, e.g. cuda:1 (default: cuda when available)")
    parser.add_argument("--no-memory-scaling", action="store_true", help="skip the memory-scaling sweep")
    return parser.parse_args(argv)


def _device(text: str) -> str:
    try:
        kind = torch.device(text).type
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda"):  # the report describes a CPU or a CUDA device, nothing else
        raise argparse.ArgumentTypeError(f"expected cpu or cuda (e.g. cuda:1), got {text!r}")
    return text


def _dtypes(spec: str) -> list[torch.dtype]:
    try:
        dtypes = list(dict.fromkeys(DTYPES[name.strip().lower()] for name in spec.split(",") if name.strip()))
    except KeyError as exc:
        raise SystemExit(f"unknown dtype {exc.args[0]!r}; choose from {', '.join(DTYPES)}")
    if not dtypes:
        raise SystemExit(f"--dtype: no dtypes selected in {spec!r}; choose from {', '.join(DTYPES)}")
    return dtypes


def default_backends() -> list[str]:
    """Every available backend that ``auto`` may pick; test-only backends such as emulators are
    measured only when named."""
    return [n for n in K.available_backends() if K.get_backend(n).auto_selectable]


def _backends(spec: str | None) -> list[str]:
    if spec is None:
        names = default_backends()
    else:
        names = [n.strip().lower() for n in spec.split(",") if n.strip()]
    for name in names:
        try:
            K.get_backend(name)
        except ValueError as exc:
            raise SystemExit(str(exc))
    return ["reference", *(n for n in dict.fromkeys(names) if n != "reference")]


def _file_stem(args: argparse.Namespace) -> str:
    if args.quick:
        return "report-quick"
    return "report-custom" if (args.shapes or args.backends or args.dtype) else "report"


def build_settings(args: argparse.Namespace, device: torch.device) -> runner.Settings:
    profile = "quick" if args.quick else device.type
    scaling = [] if args.no_memory_scaling else shapes.memory_scaling_cases(
        "quick" if args.quick else ("gpu" if device.type == "cuda" else "cpu"))
    try:
        cases = shapes.resolve(args.shapes or shapes.default_set(device.type, args.quick))
    except ValueError as exc:
        raise SystemExit(str(exc))
    return runner.Settings(device=device, dtypes=_dtypes(args.dtype or DEFAULT_DTYPES.get(device.type, "float32")),
                           cases=cases, backends=_backends(args.backends), policy=TIMING[profile],
                           scaling_cases=scaling)


class _NoProgress:
    def __init__(self, **_):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *_):
        return False

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, *_, **__) -> None:
        pass


def _progress(**kwargs):
    return (tqdm or _NoProgress)(file=sys.stderr, **kwargs)


def run(settings: runner.Settings, check: bool) -> dict:
    groups = runner.plan(settings)
    checks, rejected = [], {}
    if check:
        with _progress(total=len(groups), desc="checking", unit="group") as progress:
            checks = runner.run_checks(settings, progress)
        for result in checks:
            if not result.passed:
                rejected.setdefault(result.label, []).append(result.to_json())
        settings.backends = [b for b in settings.backends if b not in rejected]
        settings.rejected = frozenset(rejected)
        groups = runner.plan(settings)
    total = sum(len(g.backends) + 1 for g in groups)
    total += len(settings.scaling_cases) * (len(settings.backends) + 1)
    rows, scaling, interrupted = [], None, False
    # Ctrl-C (or `timeout --signal=INT`) keeps what was measured: the report is written with
    # the rows finished so far and says that it stopped early.
    try:
        with _progress(total=total, desc="benchmarking", unit="run") as progress:
            for group in groups:
                rows.extend(runner.run_group(group, settings, progress))
            if settings.scaling_cases:
                scaling = runner.run_memory_scaling(settings, progress)
    except KeyboardInterrupt:
        interrupted = True
        print(f"interrupted: writing the {len(rows)} rows measured so far", file=sys.stderr)
    return {"results": rows, "memory_scaling": scaling, "checks": [c.to_json() for c in checks] if check else None,
            "rejected": rejected, "skipped": [s for g in groups for s in g.skipped], "interrupted": interrupted}


def triton_configs() -> list[dict]:
    """The launch configuration of each Triton kernel and autotuning key measured (none if no
    Triton kernel ran): which candidates won, for choosing the fixed ones."""
    tuning = sys.modules.get("lc4_kernels.triton.tuning")
    return tuning.chosen_configs() if tuning is not None else []


def write_outputs(doc: dict, directory: Path, stem: str) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {ext: directory / f"{stem}.{ext}" for ext in ("json", "md", "png")}
    try:
        from . import plot
    except ImportError as exc:  # matplotlib missing (offline image): the tables still get written
        print(f"no plot: {exc}", file=sys.stderr)
        del paths["png"]
    else:
        plot.write_plot(doc, paths["png"])
    paths["md"].write_text(render.markdown(doc, paths["png"].name if "png" in paths else None))
    paths["json"].write_text(json.dumps(doc, indent=1) + "\n")
    return paths


def write_index(root: Path) -> Path:
    """``root/README.md``: links to the full report (``report.md``, not quick or custom runs) of
    each device found under ``root``."""
    entries = []
    for path in sorted(root.glob("*/report.json")):
        try:
            env = json.loads(path.read_text())["environment"]
            name = env["device"]["name"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        link = f"{path.parent.name}/{path.stem}.md"
        entries.append(f"| {name} | [{link}]({link}) | {env.get('date', '?')} | {(env.get('commit') or '?')[:10]} |")
    index = root / "README.md"
    index.write_text("# Benchmark results\n\nWritten by `python -m benchmarks.report` (`make bench`).\n\n"
                     "| device | report | date | commit |\n|---|---|---|---|\n" + "\n".join(entries) + "\n")
    return index


def main(argv=None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this torch has no usable CUDA device")
    settings = build_settings(args, device)
    env = environment.environment(device, sys.argv[1:] if argv is None else list(argv))
    # The measurements collect garbage before every call, and a full collection scans every object
    # the collector tracks (a third of a quick run's time): what is alive by now is left out of
    # those scans until the measurements end.
    gc.collect()
    gc.freeze()
    try:
        outcome = run(settings, args.check)
    finally:
        gc.unfreeze()  # finalised at exit as usual
    doc = {
        "schema_version": SCHEMA_VERSION,
        "environment": env,
        "settings": {"quick": args.quick, "check": args.check, "shapes": args.shapes or shapes.default_set(device.type, args.quick),
                     "dtypes": [str(d) for d in settings.dtypes], "backends_available": K.available_backends(),
                     "backends_measured": [b for b in settings.backends
                                           if any(r["kind"] == "backend" and r["label"] == b for r in outcome["results"])],
                     "timing_policy": settings.policy.__dict__},
        "shapes": [case.describe() for case in settings.cases],
        **outcome,
    }
    doc["triton_configs"] = triton_configs()
    doc["settings"]["wall_s"] = time.perf_counter() - started
    stem = _file_stem(args)
    directory = environment.results_dir(args.out, env["device"], stem)
    paths = write_outputs(doc, directory, stem)
    write_index(args.out)
    print(render.markdown(doc, None))
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    if outcome["rejected"]:
        print(f"--check rejected: {', '.join(outcome['rejected'])} (outputs disagree with the reference)", file=sys.stderr)
        return 1
    return 130 if outcome["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
