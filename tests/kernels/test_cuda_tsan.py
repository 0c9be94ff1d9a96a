"""One emulated run of the CUDA kernels under ThreadSanitizer (a separate build, no torch, whose
emulated threads are host threads rather than fibers): the threads of a block race on shared
memory if a kernel misses a barrier. The driver
(csrc/tsan/tsan_driver.cpp) also checks the forward against float64 and the atomic backward
against the deterministic one."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
CXX = os.environ.get("CXX", "g++")


@pytest.mark.skipif(shutil.which(CXX) is None, reason=f"no host compiler {CXX}")
def test_emulated_kernels_run_clean_under_thread_sanitizer(tmp_path):
    binary = tmp_path / "tsan_driver"
    kernels = [str(p) for p in sorted((CSRC / "cuda").glob("*.cu"))]
    build = subprocess.run([CXX, "-std=c++20", "-O1", "-g", "-fsanitize=thread", "-Wno-unknown-pragmas", f"-I{CSRC}",
                            "-x", "c++", *kernels, "-x", "none", str(CSRC / "tsan" / "tsan_driver.cpp"),
                            "-o", str(binary)], capture_output=True, text=True)
    if build.returncode != 0 and "tsan" in build.stderr and "cannot find" in build.stderr:
        pytest.skip(f"ThreadSanitizer runtime missing: {build.stderr[-500:]}")
    assert build.returncode == 0, build.stderr[-8000:]
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66")
    run = subprocess.run([str(binary)], capture_output=True, text=True, env=env, timeout=300)
    assert "ThreadSanitizer" not in run.stderr, run.stderr[-8000:]
    assert run.returncode == 0, run.stdout + run.stderr[-8000:]
    assert "tsan driver: ok" in run.stdout
