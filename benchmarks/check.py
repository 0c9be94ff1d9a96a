"""``--check``: every benchmarked backend against the reference, before anything is timed.

The oracle is the reference path in float64 on the same (already rounded) inputs; a backend
passes when its output and every input gradient lie within a dtype-dependent tolerance,
measured as the largest absolute difference over the largest magnitude of the oracle tensor.
The lower bounds are checked in float64 (forward only), to show they compute the same thing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import inputs as bench_inputs
from . import workloads
from .shapes import Case

TOLERANCE = {torch.float64: 1e-7, torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}
GRADIENT_NAMES = {workloads.ATTENTION: ("out", "dq", "dk", "dv", "dpoints"),
                  workloads.SAMPLE: ("out", "dvalue", "dpoints")}


@dataclass
class CheckResult:
    op: str
    case: str
    dtype: str
    label: str
    worst_error: float  # max over compared tensors of max|x - oracle| / max|oracle|
    worst_tensor: str
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.worst_error <= self.tolerance  # False for NaN as well

    def to_json(self) -> dict:
        return {**self.__dict__, "passed": self.passed}


def make_inputs(op: str, case: Case, device: torch.device, dtype: torch.dtype):
    builder = bench_inputs.attention_inputs if op == workloads.ATTENTION else bench_inputs.sample_inputs
    return builder(case, device, dtype)


def _as_float64(inputs):
    return type(inputs)(**{name: t.to(torch.float64) for name, t in inputs.__dict__.items()})


def _relative_error(x: torch.Tensor, oracle: torch.Tensor) -> float:
    scale = oracle.abs().max().item()
    diff = (x.to(torch.float64) - oracle).abs().max().item()
    return diff / scale if scale > 0 else diff


def _worst(tensors, oracles, names) -> tuple[float, str]:
    errors = [(_relative_error(x, o), n) for x, o, n in zip(tensors, oracles, names)]
    return max(errors, key=lambda e: (e[0] != e[0], e[0]))  # a NaN error is the worst


def check_op(op: str, case: Case, device: torch.device, dtype: torch.dtype, backends: list[str]) -> list[CheckResult]:
    """Results for each backend (not the reference itself) and for the op's lower bound."""
    inputs = make_inputs(op, case, device, dtype)
    exact = _as_float64(inputs)
    oracle_workload = workloads.workloads_for(op, exact, ["reference"])[1]
    oracle_out, oracle_grads = oracle_workload.output_and_grads()
    names = GRADIENT_NAMES[op]
    results = []
    for workload in workloads.workloads_for(op, inputs, [b for b in backends if b != "reference"])[1:]:
        out, grads = workload.output_and_grads()
        error, tensor = _worst([out, *grads], [oracle_out, *oracle_grads], names)
        results.append(CheckResult(op, case.name, str(dtype), workload.label, error, tensor, TOLERANCE[dtype]))
    bound = workloads.workloads_for(op, exact, [])[0]
    error = _relative_error(bound.forward(), oracle_out)
    results.append(CheckResult(op, case.name, "torch.float64", bound.label, error, "out", TOLERANCE[torch.float64] * 10))
    return results
