#!/usr/bin/env python3
"""Compile checks of the CUDA kernels (csrc/cuda/*.cu), warnings as errors, with a register and
spill report per kernel (ptxas -v):

  nvcc13    the machine's nvcc (13.x), sm_90
  cuda11.8  Debian's CUDA 11.8 (nvidia-cuda-toolkit, host compiler g++-11), sm_70, sm_80, sm_90;
            --install installs it (scripts/install_cuda118.sh) when absent
  host      the same sources as C++ with the host compiler (the cuda_emu build), -Wall -Wextra
  glue      csrc/torch_ops.cpp as the CUDA build compiles it (LC4_WITH_CUDA), syntax only, with the
            host compiler, the installed torch's headers and a toolkit's CUDA runtime headers: the
            torch glue against the CUDA launchers' declarations, where no GPU build runs

Usage: scripts/check_cuda_compile.py [--toolkit nvcc13|cuda11.8|host|glue|all] [--report-dir DIR] [--install]
                                    [--archs 70,80]  (with one of nvcc13, cuda11.8: some of its archs)
Exit status 0 when every file compiles; 1 on a compiler error; 3 when a toolkit is missing.
Reports go to DIR/<toolkit>.md (default benchmarks/results/cuda_compile).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
CUDA118_BIN = Path("/usr/lib/nvidia-cuda-toolkit/bin")
WARNINGS_AS_ERRORS = ["-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra,-Werror,-Wno-unknown-pragmas"]
HOST_FLAGS = ["-std=c++20", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas", "-fsyntax-only", "-x", "c++"]


class MissingToolkit(Exception):
    pass


def sources() -> list[Path]:
    return sorted((CSRC / "cuda").glob("*.cu"))


def gencode(archs):
    return [flag for arch in archs for flag in ("-gencode", f"arch=compute_{arch},code=sm_{arch}")]


TOOLKIT_ARCHS = {"nvcc13": ["90"], "cuda11.8": ["70", "80", "90"]}


def toolkit_command(name: str, install: bool, archs=None):
    """(compiler argv prefix, environment, archs) for a toolkit (``archs``: some of its
    ``TOOLKIT_ARCHS``, all by default), or MissingToolkit."""
    archs = list(archs or TOOLKIT_ARCHS.get(name, []))
    if name == "nvcc13":
        nvcc = shutil.which("nvcc")
        if not nvcc:
            raise MissingToolkit("no nvcc on PATH")
        return [nvcc, "-std=c++17", *gencode(archs), *WARNINGS_AS_ERRORS, "-Xptxas", "-v"], dict(os.environ), archs
    if name == "cuda11.8":
        if not (CUDA118_BIN / "nvcc").exists() or not shutil.which("g++-11"):
            if not install:
                raise MissingToolkit(f"{CUDA118_BIN / 'nvcc'} or g++-11 missing (run scripts/install_cuda118.sh)")
            done = subprocess.run([str(ROOT / "scripts" / "install_cuda118.sh")], capture_output=True, text=True)
            if done.returncode != 0:
                raise MissingToolkit(f"scripts/install_cuda118.sh failed ({done.returncode}): {done.stderr[-2000:]}")
        # Debian's ptxas and friends are in /usr/bin; another toolkit's wrappers may come first on PATH.
        env = dict(os.environ, PATH=f"{CUDA118_BIN}:/usr/bin:{os.environ.get('PATH', '')}")
        return ([str(CUDA118_BIN / "nvcc"), "-ccbin", "g++-11", "-std=c++17", *gencode(archs), *WARNINGS_AS_ERRORS,
                 "-Xptxas", "-v"], env, archs)
    if name == "host":
        cxx = os.environ.get("CXX", "g++")
        if not shutil.which(cxx):
            raise MissingToolkit(f"no host compiler {cxx}")
        return [cxx, *HOST_FLAGS], dict(os.environ), []
    raise ValueError(name)


def check_glue() -> int:
    """Syntax-checks csrc/torch_ops.cpp with LC4_WITH_CUDA; 0 when it compiles, 1 when not."""
    import sysconfig

    from torch.utils.cpp_extension import CUDA_HOME, include_paths

    cxx = os.environ.get("CXX", "g++")
    if not shutil.which(cxx):
        raise MissingToolkit(f"no host compiler {cxx}")
    # A CPU build of torch reports no CUDA_HOME, so the usual places are asked too.
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), CUDA_HOME, "/usr/local/cuda"]
    includes = [Path(home) / "include" for home in homes if home]
    cuda_include = next((path for path in includes if (path / "cuda_runtime_api.h").exists()), None)
    if cuda_include is None:
        raise MissingToolkit("no CUDA runtime headers (set CUDA_HOME)")
    system_includes = [*include_paths(), sysconfig.get_paths()["include"], str(cuda_include)]
    # A CPU build of torch ships c10's CUDA headers without their generated configuration header.
    argv = [cxx, "-std=c++20", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas",
            "-DLC4_WITH_CUDA=1", "-DTORCH_EXTENSION_NAME=_C", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", f"-I{CSRC}",
            *(flag for path in system_includes for flag in ("-isystem", path)), str(CSRC / "torch_ops.cpp")]
    done = subprocess.run(argv, capture_output=True, text=True)
    print(f"[glue] csrc/torch_ops.cpp (LC4_WITH_CUDA): {'ok' if done.returncode == 0 else 'FAILED'}", flush=True)
    if done.returncode != 0:
        print(done.stdout + done.stderr[-20000:], file=sys.stderr)
    return int(done.returncode != 0)


def compile_one(prefix, env, source: Path, out_dir: str, host: bool):
    argv = [*prefix, f"-I{CSRC}", str(source)]
    if not host:
        argv += ["-c", "-o", os.path.join(out_dir, source.stem + ".o")]
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    return source, done.returncode, done.stdout + done.stderr


ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+)'")
STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas(log: str):
    rows, current = [], None
    for line in log.splitlines():
        if m := ENTRY.search(line):
            current = dict(symbol=m.group(1), arch=m.group(2), registers=None, smem=0, stack=0, spill_stores=0,
                           spill_loads=0)
            rows.append(current)
        elif current and (m := STACK.search(line)):
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif current and (m := USED.search(line)):
            current.update(registers=int(m.group(1)), smem=int(m.group(2) or 0))
    return rows


def short_names(symbols):
    demangled = symbols
    if shutil.which("c++filt") and symbols:
        done = subprocess.run(["c++filt"], input="\n".join(symbols), capture_output=True, text=True)
        if done.returncode == 0:
            demangled = done.stdout.splitlines()
    names = []
    for name in demangled:
        name = re.sub(r"^void ", "", name)
        name = re.sub(r"lc4::cuda::|\(anonymous namespace\)::|lc4::", "", name)
        depth, cut = 0, len(name)
        for i, ch in enumerate(name):  # drop the parameter list after the template arguments
            depth += ch == "<"
            depth -= ch == ">"
            if ch == "(" and depth == 0:
                cut = i
                break
        names.append(name[:cut].replace("__nv_bfloat16", "bf16").replace("__half", "f16"))
    return names


def write_report(path: Path, toolkit: str, version: str, rows):
    names = short_names([r["symbol"] for r in rows])
    lines = [f"# Register and spill report: {toolkit}", "", f"Compiler: {version}", "",
             "Written by `scripts/check_cuda_compile.py` from `ptxas -v`, one row per kernel and arch.", "",
             "| kernel | arch | registers | smem bytes | stack bytes | spill stores | spill loads |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    seen = set()
    for name, r in sorted(zip(names, rows), key=lambda nr: (nr[0], nr[1]["arch"])):
        row = (name, r["arch"])
        if row in seen:  # a dtype-independent kernel built in several translation units
            continue
        seen.add(row)
        lines.append(f"| `{name}` | {r['arch']} | {r['registers']} | {r['smem']} | {r['stack']} | "
                     f"{r['spill_stores']} | {r['spill_loads']} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def run_toolkit(name: str, report_dir: Path, install: bool, jobs: int, archs=None) -> int:
    prefix, env, archs = toolkit_command(name, install, archs)
    host = name == "host"
    version = subprocess.run([prefix[0], "--version"], capture_output=True, text=True, env=env).stdout.strip()
    version = version.splitlines()[-1] if version else "unknown"
    failures, rows = 0, []
    with tempfile.TemporaryDirectory() as out_dir, concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for source, code, log in pool.map(lambda s: compile_one(prefix, env, s, out_dir, host), sources()):
            status = "ok" if code == 0 else f"FAILED ({code})"
            print(f"[{name}] {source.relative_to(ROOT)}: {status}", flush=True)
            if code != 0:
                failures += 1
                print(log[-20000:], file=sys.stderr)
            rows += parse_ptxas(log)
    if not host:
        write_report(report_dir / f"{name}.md", name, version, rows)
        spilling = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
        print(f"[{name}] {len(rows)} kernel builds for sm_{', sm_'.join(archs)}, {len(spilling)} with spills; "
              f"report: {report_dir / (name + '.md')}")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toolkit", choices=["nvcc13", "cuda11.8", "host", "glue", "all"], default="all")
    parser.add_argument("--report-dir", type=Path, default=ROOT / "benchmarks" / "results" / "cuda_compile")
    parser.add_argument("--install", action="store_true", help="install CUDA 11.8 when absent (root, apt)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--archs", help="comma-separated, some of the toolkit's archs (default: all of them)")
    args = parser.parse_args()
    names = ["host", "glue", "nvcc13", "cuda11.8"] if args.toolkit == "all" else [args.toolkit]
    archs = args.archs.split(",") if args.archs else None
    if archs is not None:
        if len(names) != 1 or names[0] not in TOOLKIT_ARCHS:
            parser.error(f"--archs: expected one --toolkit among {sorted(TOOLKIT_ARCHS)}")
        unknown = sorted(set(archs) - set(TOOLKIT_ARCHS[names[0]]))
        if unknown:
            parser.error(f"--archs: {names[0]} checks {','.join(TOOLKIT_ARCHS[names[0]])}, got {','.join(unknown)}")
    failures = 0
    for name in names:
        try:
            failures += (check_glue() if name == "glue" else
                         run_toolkit(name, args.report_dir, args.install, args.jobs, archs))
        except MissingToolkit as missing:
            print(f"[{name}] toolkit missing: {missing}", file=sys.stderr)
            return 3
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
