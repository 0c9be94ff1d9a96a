"""Builds lc4_kernels._C: the fused CPU backend, the host emulation of the CUDA kernels (the
test-only cuda_emu backend) and, when torch has CUDA and a CUDA toolkit is found, the CUDA
backend for TORCH_CUDA_ARCH_LIST (default 7.0;8.0;9.0). Without a toolkit it builds the CPU
extension alone; without a compiler the package still installs and runs on the reference
backend. LC4_NO_CUDA=1 skips the CUDA build."""
import glob
import os
import platform
import re
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cpu_arch_flags():
    # The extension is built on the machine that runs it, so tune for it by default;
    # LC4_CPU_ARCH=x86-64-v3 (or empty) gives a portable build.
    arch = os.environ.get("LC4_CPU_ARCH", "native")
    if not arch or platform.machine() not in ("x86_64", "AMD64", "aarch64", "arm64"):
        return []
    flag = "-mcpu=" if platform.machine() in ("aarch64", "arm64") else "-march="
    return [flag + arch]


DEFAULT_CUDA_ARCHS = "7.0;8.0;9.0"


def _nvcc_version(cuda_home):
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _cuda_home():
    """The CUDA toolkit to build with, or None (torch without CUDA, no toolkit, LC4_NO_CUDA=1)."""
    import torch
    from torch.utils import cpp_extension

    if os.environ.get("LC4_NO_CUDA") == "1" or torch.version.cuda is None:
        return None
    home = cpp_extension.CUDA_HOME
    if not home or _nvcc_version(home) is None:
        return None
    return home


def _set_cuda_arch_list(cuda_home):
    # torch's build needs the list when no GPU is visible. nvcc 13 dropped sm_70 (it builds 7.5
    # and newer), so the default list leaves 7.0 out there; an explicit list is used as given.
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return
    archs = DEFAULT_CUDA_ARCHS
    version = _nvcc_version(cuda_home)
    if version and version >= (13, 0):
        archs = "8.0;9.0"
        print("lc4: nvcc >= 13 cannot build sm_70; building for " + archs, file=sys.stderr)
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs


def _requirements():
    """requirements.txt is the one list of what the package needs to build and run."""
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        lines = (line.split("#", 1)[0].strip() for line in f)
        return [line for line in lines if line]


def _extensions():
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:  # no torch at build time: pure-Python install, reference backend only
        print("warning: torch is not importable at build time, so lc4_kernels._C is not built and only "
              "the reference backend will be available; install torch first and build with "
              "`pip install --no-build-isolation`", file=sys.stderr)
        return [], {}
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/cuda_emu/*.cpp"))
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-ffp-contract=fast", "-Wno-unknown-pragmas", *_cpu_arch_flags()]
    # -lstdc++ before the driver's own: the C++ runtime is torch's shared one even where the
    # compiler links libstdc++ statically (one GPU image's g++ did), since exceptions thrown here
    # are caught in libtorch; with a private copy the error messages came out truncated or the
    # process crashed.
    common = dict(include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=["-fopenmp", "-lstdc++"])
    cuda_home = _cuda_home()
    if cuda_home is None:
        ext = CppExtension("lc4_kernels._C", sources, extra_compile_args={"cxx": cxx}, **common)
    else:
        _set_cuda_arch_list(cuda_home)
        nvcc = ["-O3", "-std=c++17", "-lineinfo", "-Xcompiler", "-Wno-unknown-pragmas"]
        ext = CUDAExtension("lc4_kernels._C", sources + sorted(glob.glob("csrc/cuda/*.cu")),
                            define_macros=[("LC4_WITH_CUDA", "1")], extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                            **common)
    return [ext], {"build_ext": _optional(BuildExtension).with_options(use_ninja=True)}


def _optional(build_ext_class):
    """A build_ext that leaves the package installable (reference backend only) when the
    compiler fails, unless LC4_REQUIRE_EXTENSION=1 asks for the failure to stop the install."""

    class OptionalBuildExtension(build_ext_class):
        def run(self):
            try:
                super().run()
            except Exception as exc:  # compiler missing or failing
                if os.environ.get("LC4_REQUIRE_EXTENSION") == "1":
                    raise
                print(f"warning: lc4_kernels._C was not built ({exc}); only the reference backend "
                      "will be available", file=sys.stderr)

    return build_ext_class if os.environ.get("LC4_REQUIRE_EXTENSION") == "1" else OptionalBuildExtension


ext_modules, cmdclass = _extensions()

setup(
    name="lc4",
    version="0.1.0",
    description="L-C4 language-guided video colorization with fused TDA kernels",
    packages=find_packages(include=["lc4_kernels*", "lc4*"]),
    python_requires=">=3.10",
    install_requires=_requirements(),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["lc4 = lc4.cli:main"]},
)
