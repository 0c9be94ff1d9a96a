"""Smoke test of the benchmark report (issue 4): ``--quick`` on CPU into a temporary folder.

One run with ``--check`` and two test-only backends registered: an honest copy of the reference
(must be measured and reported) and a deliberately wrong one (must be rejected by ``--check``).
"""
from __future__ import annotations

import copy
import datetime
import json
import math
import statistics

import pytest
import torch

import lc4_kernels as K
from benchmarks import environment, render, report, shapes
from lc4_kernels import reference
from lc4_kernels.backends import Backend, register_backend, unregister_backend

plot = pytest.importorskip("benchmarks.plot", reason="the PNG needs matplotlib")

HONEST, WRONG = "test-honest", "test-wrong"
MEASURED_BY_DEFAULT = [n for n in K.available_backends() if K.get_backend(n).auto_selectable]
MODES = ("fwd", "fwd_bwd")


def _test_backend(name: str, distortion: float) -> Backend:
    return Backend(name=name, priority=-100, device_types=frozenset({"cpu"}),
                   dtypes=frozenset({torch.float32, torch.float64, torch.bfloat16}), auto_selectable=False,
                   trilinear_sample=lambda value, points: reference.trilinear_sample(value, points) * (1 + distortion),
                   tda_attention=lambda q, k, v, points, scale: reference.tda_attention(q, k, v, points, scale) * (1 + distortion))


@pytest.fixture(scope="module")
def checked_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    register_backend(_test_backend(HONEST, 0.0))
    register_backend(_test_backend(WRONG, 0.05))
    backends = [*MEASURED_BY_DEFAULT, HONEST, WRONG]
    try:
        status = report.main(["--quick", "--check", "--device", "cpu", "--backends", ",".join(backends),
                              "--out", str(out)])
    finally:
        unregister_backend(HONEST)
        unregister_backend(WRONG)
    reports = list(out.glob("*/report-quick.json"))
    assert len(reports) == 1, reports
    return status, json.loads(reports[0].read_text()), reports[0].parent


def test_outputs_written_next_to_each_other(checked_run):
    _, doc, folder = checked_run
    assert folder.name == doc["environment"]["device"]["slug"]
    for ext in ("md", "png"):
        assert (folder / f"report-quick.{ext}").stat().st_size > 0
    assert (folder / "report-quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (folder / "report-quick.md").read_text()
    assert "| sdpa (lower bound) |" in markdown and "## Memory scaling" in markdown


def test_json_environment_fields(checked_run):
    _, doc, _ = checked_run
    env = doc["environment"]
    assert env["device"]["type"] == "cpu" and env["device"]["name"]
    assert env["command"].startswith("python -m benchmarks.report --quick --check")
    assert env["torch"] == torch.__version__
    assert "triton" in env and env["cuda"] == torch.version.cuda
    assert env["commit"] is None or len(env["commit"]) == 40
    assert datetime.datetime.fromisoformat(env["date"]).tzinfo is not None
    described = {c["name"]: c for c in doc["shapes"]}
    assert list(described) == [c.name for c in shapes.SHAPE_SETS["quick"]]
    for case in shapes.SHAPE_SETS["quick"]:
        assert described[case.name]["nq"] == case.nq and described[case.name]["nk"] == case.nk


def test_every_backend_and_lower_bound_measured_per_case(checked_run):
    _, doc, _ = checked_run
    expected = {"reference", HONEST, *MEASURED_BY_DEFAULT}
    # On a CPU the default dtypes are float32 and bfloat16 (what torch.autocast("cpu") runs in).
    for dtype in ("torch.float32", "torch.bfloat16"):
        for case in doc["shapes"]:
            for op, bound in (("tda_attention", "sdpa"), ("trilinear_sample", "grid_sample")):
                labels = {r["label"] for r in doc["results"]
                          if r["case"] == case["name"] and r["op"] == op and r["dtype"] == dtype}
                assert labels == expected | {bound}
    for row in doc["results"]:
        assert row["error"] is None
        if row["kind"] == "backend":
            assert row["ran_backend"] == row["label"]  # dispatch ran what the row claims
        for mode in MODES:
            assert row["peak_memory_bytes"][mode] > 0


def test_ratios_and_throughput_come_from_measured_times(checked_run):
    _, doc, _ = checked_run
    for row in doc["results"]:
        group = [r for r in doc["results"] if (r["case"], r["op"], r["dtype"]) == (row["case"], row["op"], row["dtype"])]
        ref = next(r for r in group if r["label"] == "reference")
        bound = next(r for r in group if r["kind"] == "lower_bound")
        for mode in MODES:
            timing = row[mode]
            assert timing["repeats"] == len(timing["times_s"]) >= 3
            assert all(t > 0 for t in timing["times_s"])
            assert timing["median_s"] == pytest.approx(statistics.median(timing["times_s"]))
            assert row["speedup_vs_reference"][mode] == pytest.approx(ref[mode]["median_s"] / timing["median_s"])
            assert row["time_over_lower_bound"][mode] == pytest.approx(timing["median_s"] / bound[mode]["median_s"])
            work = row["work"]
            assert row["throughput"][mode] == pytest.approx(work[mode] / timing["median_s"] / work["scale"])
        assert math.isclose(ref["speedup_vs_reference"]["fwd"], 1.0)


def test_memory_scaling_covers_each_backend_and_query_count(checked_run):
    _, doc, _ = checked_run
    scaling = doc["memory_scaling"]
    assert scaling["nq"] == [c.nq for c in shapes.memory_scaling_cases("quick")]
    labels = set(scaling["growth_bytes_per_query"])
    assert {"sdpa", "reference", HONEST} <= labels and WRONG not in labels
    for label in labels:
        assert sorted(p["nq"] for p in scaling["points"] if p["label"] == label) == scaling["nq"]
        assert all(p["peak_bytes"] > 0 for p in scaling["points"] if p["label"] == label)
    # The reference materialises the scores: at least one Nk x heads row per query must show.
    assert scaling["growth_bytes_per_query"]["reference"] >= scaling["score_row_bytes"]


def test_check_rejects_the_wrong_backend_only(checked_run):
    status, doc, _ = checked_run
    assert status == 1
    assert set(doc["rejected"]) == {WRONG}
    assert WRONG not in doc["settings"]["backends_measured"]
    assert all(r["label"] != WRONG for r in doc["results"])
    failures = doc["rejected"][WRONG]
    assert {f["op"] for f in failures} == {"tda_attention", "trilinear_sample"}
    assert all(f["worst_error"] > f["tolerance"] for f in failures)
    honest = [c for c in doc["checks"] if c["label"] != WRONG]
    assert {c["label"] for c in honest} >= {HONEST, "sdpa", "grid_sample"}
    assert all(c["passed"] for c in honest)


def test_a_rejected_lower_bound_is_neither_reported_nor_a_denominator(tmp_path, monkeypatch):
    import torch.nn.functional as F

    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *args, **kwargs: sdpa(*args, **kwargs) * 1.01)
    status = report.main(["--quick", "--check", "--shapes", "quick-4x4-d80", "--backends", "reference",
                          "--no-memory-scaling", "--device", "cpu", "--out", str(tmp_path)])
    doc = json.loads(next(tmp_path.glob("*/report-quick.json")).read_text())
    assert status == 1 and set(doc["rejected"]) == {"sdpa"}
    attention = [r for r in doc["results"] if r["op"] == "tda_attention"]
    assert attention and all(r["label"] != "sdpa" for r in attention)
    assert all(r["time_over_lower_bound"] == {"fwd": None, "fwd_bwd": None} for r in attention)


def test_only_backends_that_ran_are_listed_as_measured(tmp_path):
    # cuda cannot run here: it is skipped with its reason, not listed as measured.
    report.main(["--quick", "--shapes", "quick-4x4-d80", "--backends", "cuda", "--no-memory-scaling",
                 "--device", "cpu", "--out", str(tmp_path)])
    doc = json.loads(next(tmp_path.glob("*/report-quick.json")).read_text())
    assert doc["settings"]["backends_measured"] == ["reference"]
    assert {s["backend"] for s in doc["skipped"]} == {"cuda"}


@pytest.mark.parametrize("argv, message", [(["--device", "meta"], "expected cpu or cuda"),
                                           (["--device", "gpu"], "expected cpu or cuda"),
                                           (["--dtype", ","], "--dtype: no dtypes selected")])
def test_bad_options_are_refused_before_measuring(tmp_path, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--quick", "--out", str(tmp_path), *argv])
    assert message in str(exit_info.value.code) + capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_results_of_another_device_are_never_overwritten(tmp_path):
    me = environment.device_info(torch.device("cpu"))
    other = tmp_path / me["slug"] / "report-quick.json"
    other.parent.mkdir(parents=True)
    foreign = {"environment": {"device": {**me, "name": "Some Other CPU", "threads": 64}}}
    other.write_text(json.dumps(foreign))
    gpu_report = tmp_path / "some-gpu" / "report.json"
    gpu_report.parent.mkdir()
    gpu_report.write_text(json.dumps({"environment": {"device": {"name": "Some GPU"}, "date": "2026-01-01"}}))
    status = report.main(["--quick", "--shapes", "quick-4x4-d80", "--backends", "reference", "--dtype", "float32",
                          "--no-memory-scaling", "--device", "cpu", "--out", str(tmp_path)])
    assert status == 0
    assert json.loads(other.read_text()) == foreign
    written = json.loads((tmp_path / f"{me['slug']}-2" / "report-quick.json").read_text())
    assert written["environment"]["device"]["name"] == me["name"]
    assert [r["label"] for r in written["results"] if r["op"] == "tda_attention"] == ["sdpa", "reference"]
    index = (tmp_path / "README.md").read_text()  # links full reports only, never quick runs
    assert "[some-gpu/report.md](some-gpu/report.md)" in index and "report-quick" not in index


def test_a_row_that_ran_out_of_memory_renders(checked_run, tmp_path):
    _, doc, _ = checked_run
    doc = copy.deepcopy(doc)
    row = next(r for r in doc["results"] if r["label"] == "reference" and r["op"] == "tda_attention")
    row.update({"fwd_bwd": None, "error": "fwd_bwd: out of memory"})
    row["peak_memory_bytes"].pop("fwd_bwd")
    for key in ("throughput", "speedup_vs_reference", "time_over_lower_bound"):
        row[key]["fwd_bwd"] = None
    line = next(l for l in render.markdown(doc, None).splitlines() if "| reference |" in l and row["case"] in l)
    assert "out of memory" in line and "| – |" in line
    plot.write_plot(doc, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_an_interrupted_run_writes_what_it_measured(tmp_path, monkeypatch):
    from benchmarks import runner
    run_group, calls = runner.run_group, []

    def stop_at_the_second_group(group, settings, progress):
        calls.append(group)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return run_group(group, settings, progress)

    monkeypatch.setattr(runner, "run_group", stop_at_the_second_group)
    status = report.main(["--quick", "--backends", "reference", "--device", "cpu", "--out", str(tmp_path)])
    assert status == 130
    doc = json.loads(next(tmp_path.glob("*/report-quick.json")).read_text())
    assert doc["interrupted"] is True and doc["memory_scaling"] is None
    measured = {(r["case"], r["dtype"]) for r in doc["results"]}
    assert measured == {(calls[0].case.name, str(calls[0].dtype))}
    assert "**Interrupted**" in next(tmp_path.glob("*/report-quick.md")).read_text()


def test_a_named_commit_wins_over_the_checkouts_own(monkeypatch):
    named = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("LC4_COMMIT", named)
    env = environment.environment(torch.device("cpu"), [])
    assert env["commit"] == named and env["commit_dirty"] is None
    monkeypatch.delenv("LC4_COMMIT")
    assert environment.environment(torch.device("cpu"), [])["commit"] != named


def test_triton_launch_configurations_are_listed_when_triton_ran(checked_run):
    _, doc, folder = checked_run
    # No Triton kernel runs on the CPU outside the interpreter: nothing to list.
    assert doc["triton_configs"] == [] and "## Triton launch configurations" not in (folder / "report-quick.md").read_text()
    doc = copy.deepcopy(doc)
    doc["triton_configs"] = [
        {"kernel": "attention_forward_kernel", "key": ["32768", "1024", "64", "torch.float16"], "autotuned": True,
         "config": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}},
        {"kernel": "sample_forward_kernel", "key": None, "autotuned": False,
         "config": {"BLOCK_P": 32, "num_warps": 4, "num_stages": 1}}]
    section = render.markdown(doc, None).split("## Triton launch configurations", 1)[1].split("\n## ", 1)[0]
    assert ("| attention_forward_kernel | 32768, 1024, 64, torch.float16 | BLOCK_M=128, BLOCK_N=64, num_warps=4, "
            "num_stages=3 | yes |") in section
    assert "| sample_forward_kernel | (every launch) | BLOCK_P=32, num_warps=4, num_stages=1 | no |" in section
