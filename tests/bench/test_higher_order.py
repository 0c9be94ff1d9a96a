"""Higher-order derivatives' time and memory per backend (benchmarks/higher_order.py), on CPU."""
import json

import pytest
import torch

from benchmarks import higher_order, measure


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(higher_order, "POLICY", measure.TimingPolicy(min_repeats=2, min_total_s=0.01, block_s=0.005))


def test_rows_per_workload_and_backend_with_the_reference_last(tmp_path, quick):
    assert higher_order.main(["--device", "cpu", "--shapes", "quick-8x8", "--out", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("*/higher-order.json")
    doc = json.loads(written.read_text())
    for workload in higher_order.WORKLOADS:
        backends = [r["backend"] for r in doc["rows"] if r["workload"] == workload]
        assert backends[-1] == "reference" and len(backends) >= 2, (workload, backends)
    for row in doc["rows"]:  # figures only: how they compare is the benchmark's to report
        assert row["case"] == "quick-8x8" and row["ms"] > 0 and row["peak_mib"] > 0
    text = written.with_suffix(".md").read_text()
    assert "| case | Nq | Nk | workload | backend | ms | peak MiB |" in text and "x less" in text
    assert "| gradient penalty | reference |" in text and "| hessian-vector product | reference |" in text


def test_the_gradient_penalty_is_the_gradient_of_the_squared_gradient_norm():
    """Checked on a function whose gradient penalty is known in closed form: for
    f(x, y) = <x * y, w>, df/dx = w y and df/dy = w x, so the penalty |w y|^2 + |w x|^2 has
    gradients 2 w^2 x (for x) and 2 w^2 y (for y)."""
    gen = torch.Generator().manual_seed(0)
    x, y, w = (torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    dx, dy = higher_order.gradient_penalty(lambda a, b: a * b, (x, y), w)
    torch.testing.assert_close(dx, 2 * w.square() * x)
    torch.testing.assert_close(dy, 2 * w.square() * y)
    assert not x.requires_grad  # the caller's tensors are left alone


def test_the_hessian_vector_product_is_the_gradients_tangent():
    """For f(x, y) = <x * y, w> the gradient is (w y, w x) and its tangent along (tx, ty) is
    (w ty, w tx)."""
    gen = torch.Generator().manual_seed(0)
    x, y, w, tx, ty = (torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(5))
    (gx, gy), (hx, hy) = higher_order.hessian_vector_product(lambda a, b: a * b, (x, y), w, (tx, ty))
    for actual, expected in ((gx, w * y), (gy, w * x), (hx, w * ty), (hy, w * tx)):
        torch.testing.assert_close(actual, expected)


def test_a_bad_dtype_is_named():
    with pytest.raises(SystemExit, match="--dtype"):
        higher_order.main(["--device", "cpu", "--dtype", "float8", "--shapes", "quick-8x8"])
