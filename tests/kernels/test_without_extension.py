"""`import lc4_kernels` works without the compiled extension: reference backend only, with a
message that names what is missing."""
import json
import subprocess
import sys
import textwrap

import lc4_kernels


def test_import_without_compiled_extension_falls_back_to_reference():
    script = textwrap.dedent("""
        import json, sys, warnings
        sys.modules["lc4_kernels._C"] = None  # as if the extension had not been built
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import lc4_kernels
        import torch
        q = torch.randn(1, 4, 2, 8)
        k = torch.randn(1, 2, 3, 3, 2, 8)
        out = lc4_kernels.tda_attention(q, k, k, torch.rand(1, 5, 1, 3) * 2)
        print(json.dumps({"backends": lc4_kernels.available_backends(), "error": lc4_kernels.extension_error,
                          "warnings": [str(w.message) for w in caught], "shape": list(out.shape),
                          "chosen": lc4_kernels.backend_for("tda_attention", q, k, k, torch.rand(1, 5, 1, 3))}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # Only compiled backends disappear; Python ones (triton on a GPU machine) may remain.
    assert "cpu" not in report["backends"] and report["backends"][-1] == "reference"
    assert report["chosen"] == "reference"
    assert report["shape"] == [1, 4, 2, 8]
    assert "lc4_kernels._C is not built" in report["error"]
    assert any("only the 'reference' backend is available" in w for w in report["warnings"])
    assert lc4_kernels.extension_error is None or "not built" in lc4_kernels.extension_error
