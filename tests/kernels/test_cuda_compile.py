"""Compile checks of csrc/cuda/*.cu (warnings as errors) through scripts/check_cuda_compile.py:
the host compiler (the cuda_emu build), the machine's nvcc 13 for sm_90, and CUDA 11.8 with
g++-11 for sm_70/80 (installed by scripts/install_cuda118.sh when absent and apt is usable; its
sm_90 build, which the kernels' code paths share with sm_80, is left to nvcc 13 here to save a
minute, and kept in the committed report);
and csrc/torch_ops.cpp as the CUDA build compiles it.
Each also checks the register/spill report lists every generated kernel instantiation."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_cuda_compile.py"
CUDA118_NVCC = Path("/usr/lib/nvidia-cuda-toolkit/bin/nvcc")


def head_dim_buckets():
    text = (ROOT / "csrc" / "cuda" / "head_dims.h").read_text()
    line = re.search(r"#define LC4_FOR_EACH_HEAD_DIM\(X\)(.*)", text).group(1)
    return [int(d) for d in re.findall(r"X\((\d+)\)", line)]


def run_check(toolkit, report_dir, *extra):
    done = subprocess.run([sys.executable, str(SCRIPT), "--toolkit", toolkit, "--report-dir", str(report_dir), *extra],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"{toolkit} compile check failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-8000:]}"
    return done


def assert_report_covers_every_instantiation(report: Path, archs):
    text = report.read_text()
    # float32 on CUDA cores, float16/bfloat16 on tensor cores (WMMA) for the forward, dk~/dv~ (with
    # and without dq by atomics; up to d = 80 also with 16 keys a warp) and, up to d = 128, dq.
    for arch in archs:
        for dtype in ("float", "f16", "bf16"):
            for d in head_dim_buckets():
                if dtype == "float":
                    variants = [f"{kernel}<float, {d}>" for kernel in
                                ("attention_forward_kernel", "attention_dkv_kernel", "attention_dq_kernel")]
                else:
                    variants = [f"attention_forward_wmma_kernel<{dtype}, {d}>", f"attention_dq_kernel<{dtype}, {d}>"]
                    variants += [f"attention_dkv_wmma_kernel<{dtype}, {d}, {atomic}>" for atomic in ("false", "true")]
                if dtype != "float" and d <= 128:  # the register tensor-core forwards, one pass and two
                    variants += [f"attention_forward_registers_kernel<{dtype}, {d}, {two}>" for two in ("false", "true")]
                    variants.append(f"attention_dq_wmma_kernel<{dtype}, {d}>")
                if dtype != "float" and d <= 80:
                    variants.append(f"attention_dkv_registers_kernel<{dtype}, {d}>")
                for variant in variants:
                    assert re.search(rf"`{re.escape(variant)}` \| sm_{arch} \| \d+ \|", text), (variant, arch)
        assert re.search(rf"`sample_forward_kernel<float>` \| sm_{arch} \|", text)


def test_head_dim_buckets_cover_the_sd15_head_dims_and_reach_256():
    buckets = head_dim_buckets()
    assert {40, 64, 80, 128, 160} <= set(buckets) and max(buckets) == 256 and buckets == sorted(buckets)


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="no host C++ compiler")
def test_kernel_sources_compile_as_host_cpp_without_warnings(tmp_path):
    done = run_check("host", tmp_path)
    assert done.stdout.count(": ok") == len(list((ROOT / "csrc" / "cuda").glob("*.cu")))


def test_the_torch_glue_compiles_as_the_cuda_build_compiles_it(tmp_path):
    # No GPU build runs here, so this is what keeps csrc/torch_ops.cpp's CUDA half in step with
    # the launchers it calls (csrc/cuda/launchers.h).
    done = subprocess.run([sys.executable, str(SCRIPT), "--toolkit", "glue"], capture_output=True, text=True)
    if done.returncode == 3:
        pytest.skip(done.stderr.strip())
    assert done.returncode == 0, f"glue compile check failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-8000:]}"
    assert "[glue] csrc/torch_ops.cpp (LC4_WITH_CUDA): ok" in done.stdout


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH (the machine's nvcc 13 checks sm_90)")
def test_every_cu_compiles_for_sm90_with_the_machine_nvcc(tmp_path):
    run_check("nvcc13", tmp_path)
    assert_report_covers_every_instantiation(tmp_path / "nvcc13.md", ["90"])


def test_every_cu_compiles_for_sm70_sm80_with_cuda_11_8(tmp_path):
    if not CUDA118_NVCC.exists() and (os.geteuid() != 0 or shutil.which("apt-get") is None):
        pytest.skip("CUDA 11.8 is not installed and cannot be (needs root and apt-get for nvidia-cuda-toolkit)")
    run_check("cuda11.8", tmp_path, "--install", "--archs", "70,80")
    assert_report_covers_every_instantiation(tmp_path / "cuda11.8.md", ["70", "80"])
    assert "| sm_90 |" not in (tmp_path / "cuda11.8.md").read_text()


@pytest.mark.parametrize("args,message", [
    (["--toolkit", "cuda11.8", "--archs", "75"], "cuda11.8 checks 70,80,90, got 75"),
    (["--toolkit", "host", "--archs", "90"], "expected one --toolkit among"),
])
def test_archs_outside_the_toolkits_are_refused(args, message):
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr, done.stderr
