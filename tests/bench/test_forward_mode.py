"""Forward-mode time and memory per backend (benchmarks/forward_mode.py), on CPU."""
import json

import pytest

from benchmarks import forward_mode, measure


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(forward_mode, "POLICY", measure.TimingPolicy(min_repeats=2, min_total_s=0.01, block_s=0.005))


def test_rows_per_backend_with_the_reference_last(tmp_path, quick):
    assert forward_mode.main(["--device", "cpu", "--shapes", "quick-8x8", "--out", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("*/forward-mode.json")
    doc = json.loads(written.read_text())
    backends = [r["backend"] for r in doc["rows"]]
    assert backends[-1] == "reference" and len(backends) >= 2, backends
    for row in doc["rows"]:  # figures only: how they compare is the benchmark's to report
        assert row["case"] == "quick-8x8" and row["jvp_ms"] > 0 and row["peak_mib"] > 0
    text = written.with_suffix(".md").read_text()
    assert "| case | Nq | Nk | backend | jvp ms | peak MiB |" in text and "x less" in text


def test_a_bad_dtype_is_named():
    with pytest.raises(SystemExit, match="--dtype"):
        forward_mode.main(["--device", "cpu", "--dtype", "float8", "--shapes", "quick-8x8"])
