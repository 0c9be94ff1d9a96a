"""Peak memory per backend (benchmarks/peak_memory.py), on CPU."""
import json

import pytest

from benchmarks import peak_memory
from benchmarks.shapes import Case


def test_peak_holds_at_least_what_forward_backward_returns(tmp_path):
    assert peak_memory.main(["--cases", "quick-8x8", "--backends", "cpu", "reference", "--device", "cpu",
                             "--dtype", "float32", "--out", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("*/peak-memory.json")
    doc = json.loads(written.read_text())
    assert [row["label"] for row in doc["rows"]] == ["cpu", "reference"]  # no SDPA on the CPU
    case = doc["cases"]["quick-8x8"]
    nq, nk, heads, d = case["nq"], case["nk"], case["heads"], case["head_dim"]
    maps = case["batch"] * case["frames"] * case["height"] * case["width"] * heads * d
    returned = 4 * (2 * case["batch"] * nq * heads * d + 2 * maps) + 4 * case["batch"] * nk * case["groups"] * 3
    for row in doc["rows"]:  # out, dq, dk, dv and dpoints are allocated by the call and kept
        assert returned <= row["peak_bytes"] < 20 * returned, row
    assert "| quick-8x8 | 512 | 64 | 40 | cpu |" in written.with_suffix(".md").read_text()


def test_unknown_case_is_refused_by_name():
    assert isinstance(peak_memory.CASES["sd15-512px-64x64"], Case)
    with pytest.raises(SystemExit):
        peak_memory.parse_args(["--cases", "sd15-512px-65x65", "--backends", "cpu"])

