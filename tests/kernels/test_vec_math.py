"""The CPU softmax's row kernels (csrc/cpu/vec_math.h) checked on their own by a driver without
torch (csrc/accuracy/vec_math_driver.cpp): exp within 3 ulp over its clamped range, the bfloat16
stores rounding to nearest even, the row kernels' float and bfloat16 outputs agreeing, the float16
and bfloat16 vector loads and stores (whole and partial) converting exactly. Built for
every SIMD width this CPU runs (the extension is built for one of them: -march=native)."""
import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
CXX = os.environ.get("CXX", "g++")


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _architectures() -> list[str]:
    """-march values whose code this CPU runs: AVX-512 (native here), AVX2 + FMA, baseline SSE."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return ["native"]
    flags = _cpu_flags()
    runnable = ["native"]
    if {"avx2", "fma", "bmi2"} <= flags:
        runnable.append("x86-64-v3")
    runnable.append("x86-64")
    return runnable


@pytest.mark.skipif(shutil.which(CXX) is None, reason=f"no host compiler {CXX}")
@pytest.mark.parametrize("arch", _architectures())
def test_softmax_row_kernels_are_accurate_at_every_simd_width(tmp_path, arch):
    binary = tmp_path / "vec_math_driver"
    build = subprocess.run([CXX, "-std=c++20", "-O3", f"-march={arch}", "-ffp-contract=fast", "-Wall", "-Werror",
                            f"-I{CSRC}", str(CSRC / "accuracy" / "vec_math_driver.cpp"), "-o", str(binary)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-8000:]
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "vec_math driver: ok" in run.stdout
