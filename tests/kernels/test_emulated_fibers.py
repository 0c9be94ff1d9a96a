"""The emulator's fibers (csrc/cuda/emulated_fibers.h: the threads of an emulated block as fibers
of one host thread) checked by a driver without torch (csrc/emulation/fiber_driver.cpp): barriers
order shared-memory writes and reads, warp shuffles and votes give the right lanes' values, a
thread can use half a megabyte of stack, launches from three host threads at once stay apart, and a
barrier one thread skips stops the run with a deadlock message instead of hanging. Built with the
inline-assembly switch (what the cuda_emu backend uses here) and with the swapcontext fallback,
at -O0 and -O3. The aarch64 switch is run under qemu in test_aarch64_build.py."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
CXX = os.environ.get("CXX", "g++")

pytestmark = pytest.mark.skipif(sys.platform != "linux" or shutil.which(CXX) is None,
                                reason=f"needs Linux and a host compiler {CXX}")


@pytest.fixture(scope="module", params=[("switch", "-O3"), ("switch", "-O0"), ("ucontext", "-O3")],
                ids=lambda p: "-".join(p))
def driver(request, tmp_path_factory):
    switch, optimization = request.param
    binary = tmp_path_factory.mktemp("fibers") / "fiber_driver"
    defines = ["-DLC4_EMU_UCONTEXT"] if switch == "ucontext" else []
    build = subprocess.run([CXX, "-std=c++20", optimization, "-Wall", "-Wextra", "-Werror", *defines, f"-I{CSRC}",
                            str(CSRC / "emulation" / "fiber_driver.cpp"), "-o", str(binary), "-pthread"],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-8000:]
    return binary


def test_barriers_shuffles_stacks_and_concurrent_launches(driver):
    run = subprocess.run([str(driver)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "fiber driver: ok" in run.stdout, run.stdout + run.stderr


def test_a_skipped_barrier_is_reported_as_a_deadlock(driver):
    run = subprocess.run([str(driver), "deadlock"], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0, run.stdout
    assert "cuda_emu: deadlock: the threads of a block wait at barriers that the others never reach" in run.stderr
