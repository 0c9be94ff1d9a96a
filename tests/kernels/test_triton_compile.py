"""The triton backend's kernels compile for sm_80 and sm_90 without a GPU: the GPU compiler
rejects what the interpreter accepts (tl.dot below 16, dtype mismatches in tl.dot), so the
interpreter tests alone would not catch it. One config per kernel here; every config with
``python -m lc4_kernels.triton.compile_check --configs every``."""
import pytest

triton = pytest.importorskip("triton")
compile_check = pytest.importorskip("lc4_kernels.triton.compile_check")

reason = compile_check.supported()
pytestmark = pytest.mark.skipif(reason is not None, reason=f"ahead-of-time compile not possible: {reason}")


@pytest.mark.parametrize("capability,dtype,head_dim", [(80, "fp32", 40), (90, "bf16", 8)])
def test_every_kernel_compiles_and_fits_in_shared_memory(capability, dtype, head_dim):
    compiled = list(compile_check.compile_kernels(capability, dtype, head_dim, which="smallest"))
    assert len(compiled) == 7
    for name, config, shared in compiled:
        assert shared <= compile_check.SHARED_MEMORY_LIMIT[capability], f"{name} {config}"
