"""torch.export and AOTInductor: the ops trace as single registered-op nodes with symbolic sizes,
survive save/load, keep their autograd in the exported module, and run from an AOTInductor
package (the C++-registered ``lc4`` ops natively; the Python-registered ``lc4_triton`` ops call
back into Python)."""
import io

import pytest
import torch
from torch.export import Dim

import lc4_kernels
from lc4.tda import TemporalContext, TemporallyDeformableAttention

from .cases import assert_close, attention_inputs, compiled_backend_cases, run_with_grads, sample_inputs

BACKEND_CASES = [case for case in compiled_backend_cases(torch.float32) if case[1] == "cpu"] + [("reference", "cpu")]
OP_NAMESPACE = {"cpu": "lc4", "cuda": "lc4", "cuda_emu": "lc4_emu", "triton": "lc4_triton"}


class BothOps(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.backend = backend

    def forward(self, q, k, v, points, value, sample_points):
        attended = lc4_kernels.tda_attention(q, k, v, points, backend=self.backend)
        return attended, lc4_kernels.trilinear_sample(value, sample_points, backend=self.backend)


def _inputs(Nq, Nk, P, seed=0):
    q, k, v, points = attention_inputs(Nq=Nq, Nk=Nk, heads=2, d=8, G=2, seed=seed, special_fraction=0)
    value, sample_points = sample_inputs(B=1, P=P, G=2, C=4, seed=seed, special_fraction=0)
    return q, k, v, points, value, sample_points


def _dynamic_shapes():
    nq, nk, p = Dim("nq", min=2, max=4096), Dim("nk", min=2, max=4096), Dim("p", min=2, max=4096)
    return ({1: nq}, None, None, {1: nk}, None, {1: p})


def _lc4_op_namespaces(graph_module):
    return {node.target.namespace for node in graph_module.graph.nodes
            if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
            and node.target.namespace.startswith("lc4")}


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
def test_export_with_symbolic_sizes_runs_other_shapes_after_save_and_load(backend, device):
    model = BothOps(backend)
    exported = torch.export.export(model, _inputs(Nq=9, Nk=7, P=5), dynamic_shapes=_dynamic_shapes())
    expected_ops = set() if backend == "reference" else {OP_NAMESPACE[backend]}
    assert _lc4_op_namespaces(exported.graph_module) == expected_ops

    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    for Nq, Nk, P in [(9, 7, 5), (23, 3, 17), (2, 40, 2)]:
        inputs = _inputs(Nq, Nk, P, seed=Nq)
        for actual, expected in zip(loaded(*inputs), model(*inputs)):
            assert actual.shape == expected.shape
            torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
def test_exported_module_keeps_the_ops_gradients(backend, device):
    model = BothOps(backend)
    exported = torch.export.export(model, _inputs(Nq=9, Nk=7, P=5), dynamic_shapes=_dynamic_shapes()).module()
    inputs = _inputs(Nq=13, Nk=11, P=6, seed=3)

    def flat(module):
        return lambda *args: torch.cat([out.flatten() for out in module(*args)])

    actual_out, actual_grads = run_with_grads(flat(exported), inputs)
    expected_out, expected_grads = run_with_grads(flat(BothOps("reference")), inputs)
    assert_close(actual_out, expected_out, torch.float32, "output")
    for name, actual, expected in zip(["q", "k", "v", "points", "value", "sample_points"], actual_grads,
                                      expected_grads):
        assert actual.abs().sum() > 0, name
        assert_close(actual, expected, torch.float32, f"d{name}")


class TDAWithContext(torch.nn.Module):
    """A TDA layer with its temporal context fixed, as a model exporting a UNet level holds it."""

    def __init__(self, frames, size):
        super().__init__()
        torch.manual_seed(0)
        self.tda = TemporallyDeformableAttention(16, num_heads=4, offset_groups=2, spatial_stride=2,
                                                 temporal_stride=2)
        for layer in (self.tda.offset_out, self.tda.to_out):  # zero-initialised: no offsets, no output
            torch.nn.init.normal_(layer.weight, std=0.3)
        self.context = TemporalContext(frames, size)

    def forward(self, hidden_states):
        return self.tda(hidden_states, self.context)


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
def test_exported_tda_layer_keeps_the_op_through_decompositions(backend, device):
    layer = TDAWithContext(4, (6, 5)).eval()
    layer.tda.backend = backend
    hidden = torch.randn(2 * 4, 6 * 5, 16)
    exported = torch.export.export(layer, (hidden,)).run_decompositions()
    expected_ops = set() if backend == "reference" else {OP_NAMESPACE[backend]}
    assert _lc4_op_namespaces(exported.graph_module) == expected_ops
    other = torch.randn_like(hidden)
    torch.testing.assert_close(exported.module()(other), layer(other), rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", [case for case in BACKEND_CASES if case[0] != "reference"])
def test_aot_inductor_package_runs_the_registered_ops(backend, device, tmp_path):
    model = BothOps(backend)
    exported = torch.export.export(model, _inputs(Nq=9, Nk=7, P=5), dynamic_shapes=_dynamic_shapes())
    package = torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp_path / "both_ops.pt2"))
    compiled = torch._inductor.aoti_load_package(package)
    for Nq, Nk, P in [(9, 7, 5), (31, 4, 12)]:
        inputs = _inputs(Nq, Nk, P, seed=Nq)
        for actual, expected in zip(compiled(*inputs), model(*inputs)):
            torch.testing.assert_close(actual, expected, rtol=0, atol=0)
