"""The CPU code on aarch64 (Graviton, Ampere, Grace), checked from an x86 machine with Debian's
cross compiler and qemu (installed by scripts/install_aarch64_cross.sh when absent and apt is
usable): the softmax row kernels' driver (csrc/accuracy/vec_math_driver.cpp) built for plain
ARMv8 NEON and for Neoverse V1 and run under qemu-aarch64, the emulator's fiber switch run the
same way (csrc/emulation/fiber_driver.cpp), and every source of the extension compiled for
aarch64 with warnings as errors against this torch's headers (GCC 12 has no _Float16 in C++
there, which once broke the build)."""
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
CROSS_CXX = "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64"
# Every 1009th float for exp: long double is software on aarch64, slow under the emulator.
EMULATED_EXP_STRIDE = "1009"

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                                reason="cross-checks aarch64 from an x86 machine")


@pytest.fixture(scope="module")
def cross_tools():
    if shutil.which(CROSS_CXX) and shutil.which(QEMU):
        return
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{CROSS_CXX} and {QEMU} are not installed and cannot be (needs root and apt-get)")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "install_aarch64_cross.sh")], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.parametrize("cpu", ["generic", "neoverse-v1"])
def test_softmax_row_kernels_are_accurate_on_aarch64(cross_tools, tmp_path, cpu):
    binary = tmp_path / "vec_math_driver"
    build = subprocess.run([CROSS_CXX, "-std=c++20", "-O3", f"-mcpu={cpu}", "-ffp-contract=fast", "-Wall", "-Werror",
                            "-static", f"-I{CSRC}", str(CSRC / "accuracy" / "vec_math_driver.cpp"), "-o", str(binary)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-8000:]
    run = subprocess.run([QEMU, str(binary), EMULATED_EXP_STRIDE], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "vec_math driver: 4 lanes" in run.stdout and "vec_math driver: ok" in run.stdout


def test_emulated_block_threads_switch_as_fibers_on_aarch64(cross_tools, tmp_path):
    """The aarch64 switch of csrc/cuda/emulated_fibers.h (inline assembly, with branch
    protection's landing pads), run by csrc/emulation/fiber_driver.cpp under qemu."""
    binary = tmp_path / "fiber_driver"
    build = subprocess.run([CROSS_CXX, "-std=c++20", "-O2", "-mcpu=neoverse-v1", "-mbranch-protection=standard",
                            "-Wall", "-Wextra", "-Werror", "-static", f"-I{CSRC}",
                            str(CSRC / "emulation" / "fiber_driver.cpp"), "-o", str(binary), "-pthread"],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-8000:]
    run = subprocess.run([QEMU, str(binary)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "fiber driver: ok" in run.stdout, run.stdout + run.stderr
    deadlock = subprocess.run([QEMU, str(binary), "deadlock"], capture_output=True, text=True, timeout=300)
    assert deadlock.returncode != 0 and "cuda_emu: deadlock" in deadlock.stderr, deadlock.stdout + deadlock.stderr


def test_extension_sources_compile_for_aarch64(cross_tools, tmp_path):
    torch_include = Path(torch.__file__).parent / "include"
    # setup.py's flags for the C++ sources, -mcpu for a current server core, -O1 to keep it quick.
    flags = ["-std=c++20", "-O1", "-mcpu=neoverse-v1", "-fopenmp", "-ffp-contract=fast", "-Wno-unknown-pragmas",
             "-Wall", "-Werror", "-fPIC", "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C",
             f"-I{CSRC}", f"-I{torch_include}", f"-I{torch_include / 'torch' / 'csrc' / 'api' / 'include'}",
             f"-I{sysconfig.get_paths()['include']}"]
    sources = sorted([*CSRC.glob("*.cpp"), *(CSRC / "cpu").glob("*.cpp"), *(CSRC / "cuda_emu").glob("*.cpp")])
    assert any(s.parent.name == "cpu" for s in sources) and (CSRC / "torch_ops.cpp") in sources

    def compile_one(source):
        command = [CROSS_CXX, *flags, "-c", str(source), "-o", str(tmp_path / (source.stem + ".o"))]
        return source, subprocess.run(command, capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for source, done in pool.map(compile_one, sources):
            assert done.returncode == 0, f"{source.relative_to(ROOT)}:\n{done.stderr[-6000:]}"
