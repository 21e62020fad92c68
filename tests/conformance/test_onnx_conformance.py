"""ONNX backend node tests of the supported ops through phi_engine (issue 3 target: >= 95 %).

Every node test whose ops are all supported runs through ``onnx.backend.test.BackendTest``;
the counts and any failures are printed (``pytest -s`` shows them), and the pass rate must stay at
or above 95 %.
"""

from __future__ import annotations

import onnx_node_tests


def test_node_tests_of_supported_ops_pass() -> None:
    report = onnx_node_tests.run_node_tests()
    for name, message in sorted(report.failed.items()):
        print(f"FAIL {name}: {message}")
    print(
        f"ONNX node tests of supported ops: {len(report.passed)} passed of {report.run} "
        f"({100 * report.pass_rate:.1f} %); {len(report.unsupported)} use unsupported ops"
    )
    assert report.run >= 500, "fewer node tests ran than the supported ops have"
    assert report.pass_rate >= 0.95, sorted(report.failed)


def test_node_tests_pass_on_the_xla_backend() -> None:
    """The same node tests through ``compile(device="xla")`` (JAX on the CPU here), for every
    model the XLA backend compiles; what it refuses at compile time is counted, not run."""
    import pytest

    pytest.importorskip("jax", reason="the XLA backend needs jax")
    report = onnx_node_tests.run_node_tests(device="xla")
    for name, message in sorted(report.failed.items()):
        print(f"FAIL (xla) {name}: {message}")
    print(
        f"ONNX node tests on xla: {len(report.passed)} passed of {report.run} "
        f"({100 * report.pass_rate:.1f} %); {len(report.unsupported)} not compiled by xla"
    )
    assert report.run >= 400, "fewer node tests ran on xla than its ops have"
    assert report.pass_rate >= 0.95, sorted(report.failed)
