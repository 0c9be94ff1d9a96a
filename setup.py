"""Builds lc4_kernels._C: the fused CPU backend (and, when torch has CUDA and a toolkit is
found, the CUDA backend). Without a compiler the package still installs and runs on the
reference backend."""
import glob
import os
import platform
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


def _extensions():
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:  # no torch at build time: pure-Python install, reference backend only
        return [], {}
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-ffp-contract=fast", *_cpu_arch_flags()]
    ext = CppExtension(
        "lc4_kernels._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )
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
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["lc4 = lc4.cli:main"]},
)
