"""The compiled extension shares torch's C++ runtime. Its C++ errors are thrown in lc4_kernels._C
and caught in libtorch; with a private, statically linked libstdc++ (what one GPU image's g++
produced) those errors crashed the process or lost the end of their message."""
import importlib.util
import shutil
import subprocess

import pytest


def _extension_path() -> str:
    spec = importlib.util.find_spec("lc4_kernels._C")
    if spec is None or spec.origin is None:
        pytest.skip("lc4_kernels._C is not built")
    return spec.origin


def _readelf(*args: str) -> str:
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) not installed")
    return subprocess.run(["readelf", "--wide", *args, _extension_path()], capture_output=True, text=True,
                          check=True).stdout


def test_extension_links_the_shared_cxx_runtime():
    assert "[libstdc++.so.6]" in _readelf("--dynamic"), "lc4_kernels._C does not load libstdc++.so.6"


def test_extension_defines_no_cxx_runtime_of_its_own():
    runtime = {"__cxa_throw", "__cxa_begin_catch", "__gxx_personality_v0"}
    defined = []
    for line in _readelf("--dyn-syms").splitlines():
        fields = line.split()  # Num: Value Size Type Bind Vis Ndx Name[@version] [(n)]
        if len(fields) >= 8 and fields[7].split("@")[0] in runtime and fields[6] != "UND":
            defined.append(fields[7])
    assert not defined, f"lc4_kernels._C defines C++ runtime symbols itself (static libstdc++?): {defined}"
