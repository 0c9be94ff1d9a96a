"""Where a report comes from: the device, library versions, commit and date, and the results
folder named after the device."""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Optional

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS_ROOT = Path(__file__).resolve().parent / "results"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def slugify(text: str) -> str:
    text = re.sub(r"\((r|tm|c)\)", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def device_info(device: torch.device) -> dict:
    """Name and the properties that make results comparable; ``slug`` names the results folder."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": props.name, "slug": slugify(props.name),
                "compute_capability": f"{props.major}.{props.minor}",
                "memory_bytes": props.total_memory, "multiprocessors": props.multi_processor_count}
    name = _cpu_model()
    threads = torch.get_num_threads()
    return {"type": "cpu", "name": name, "slug": f"cpu-{slugify(name)}-{threads}t", "threads": threads,
            "logical_cores": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _git(*args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _triton_version() -> Optional[str]:
    try:
        import triton
    except ImportError:
        return None
    return getattr(triton, "__version__", "unknown")


def environment(device: torch.device, arguments: list[str], program: str = "benchmarks.report") -> dict:
    named_commit = os.environ.get("LC4_COMMIT")
    status = None if named_commit else _git("status", "--porcelain", "--untracked-files=no")
    return {
        "device": device_info(device),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        # LC4_COMMIT names the commit of a tree copied to another machine, whose .git may be absent or stale.
        "commit": named_commit or _git("rev-parse", "HEAD"),
        "commit_dirty": None if status is None else bool(status),
        # Other work on the machine inflates times and their spread; readers should see it.
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([f"python -m {program}", *arguments]),
    }


def markdown_header(title: str, doc: dict, note: str) -> list[str]:
    """The opening lines of a results page of one case (``doc``: environment, case, dtype):
    title, case and dtype, then ``note``, versions, commit, date, command."""
    env, case = doc["environment"], doc["case"]
    return [f"# {title}: {env['device']['name']}", "",
            f"- Case {case['name']}: Nq {case['nq']}, Nk {case['nk']}, heads {case['heads']}, d {case['head_dim']}; "
            f"{doc['dtype'].removeprefix('torch.')}; {note}",
            f"- torch {env['torch']}, Triton {env['triton'] or 'not installed'}; commit {env['commit'] or 'unknown'}; "
            f"{env['date']}", f"- Command: `{env['command']}`", ""]


def write_results(root: Path, doc: dict, stem: str, text: str) -> Path:
    """Writes ``text`` and ``doc`` as ``root/<device slug>/<stem>.md`` and ``.json``, prints the
    text, and returns the folder."""
    directory = root / doc["environment"]["device"]["slug"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stem}.md").write_text(text)
    (directory / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(text)
    return directory


def _same_device(a: dict, b: dict) -> bool:
    keys = ("type", "name", "threads", "compute_capability")
    return all(a.get(k) == b.get(k) for k in keys)


def results_dir(root: Path, device: dict, stem: str) -> Path:
    """``root/<slug>``, or ``root/<slug>-2`` etc. when that folder holds a report of a different
    device whose name gives the same slug: a results file of another device is never replaced."""
    candidate, suffix = root / device["slug"], 1
    while (candidate / f"{stem}.json").exists():
        try:
            earlier = json.loads((candidate / f"{stem}.json").read_text())["environment"]["device"]
        except (OSError, ValueError, KeyError, TypeError):
            earlier = None  # unreadable: treat as another device's, keep it
        if earlier is not None and _same_device(earlier, device):
            break
        suffix += 1
        candidate = root / f"{device['slug']}-{suffix}"
    return candidate
