"""The profile of one tda_attention forward+backward per backend (benchmarks/profile.py), on CPU."""
import json

import pytest

import lc4_kernels as K

from benchmarks import profile


def test_profile_writes_one_row_per_workload_with_its_top_operators(tmp_path):
    assert profile.main(["--case", "quick-8x8", "--backends", "reference", "--iterations", "2", "--tag", "t",
                         "--device", "cpu", "--out", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("*/profile-quick-8x8-float32-t.json")
    doc = json.loads(written.read_text())
    assert [r["label"] for r in doc["rows"]] == ["sdpa", "reference"]
    assert doc["environment"]["command"].startswith("python -m benchmarks.profile")
    for row in doc["rows"]:
        assert row["wall_ms"] > 0 and 0 < len(row["top"]) <= profile.TOP
        shares = [t["ms_per_iteration"] for t in row["top"]]
        assert shares == sorted(shares, reverse=True)
    # The reference materialises the scores: its operators include a batched matrix product.
    assert any("bmm" in t["name"] or "matmul" in t["name"] or "einsum" in t["name"] for t in doc["rows"][1]["top"])
    text = written.with_suffix(".md").read_text()
    assert "| sdpa (lower bound) |" in text and "## reference: top operators by own CPU time" in text


@pytest.mark.skipif("cuda_emu" not in K.available_backends(), reason="compiled extension missing")
def test_backends_that_cannot_run_the_dtype_are_left_out(tmp_path):
    # The CUDA kernels' host emulation runs float32, float16 and bfloat16, not float64.
    assert profile.main(["--case", "quick-8x8", "--backends", "cuda_emu", "--dtype", "float64", "--iterations", "1",
                         "--device", "cpu", "--out", str(tmp_path)]) == 0
    doc = json.loads(next(tmp_path.glob("*/profile-quick-8x8-float64.json")).read_text())
    assert doc["left_out"] == ["cuda_emu"] and [r["label"] for r in doc["rows"]] == ["sdpa"]
