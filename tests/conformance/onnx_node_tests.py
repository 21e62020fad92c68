"""Run the ONNX backend node tests through phi_engine and count the results.

Every node test of the ``onnx`` package (generated in memory by recent wheels) whose model uses
only ops and op versions phi_engine implements is run through
``onnx.backend.test.BackendTest(PhiBackend)``; the rest are counted as unsupported and not run.
No test is selected or excused by name.

    python tests/conformance/onnx_node_tests.py            # summary and per-op table
    python tests/conformance/onnx_node_tests.py --ops Add,Sub --failures
"""

from __future__ import annotations

import argparse
import collections
import io
import sys
import unittest
import warnings
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Report:
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> first lines of the error
    unsupported: list[str] = field(default_factory=list)
    ops: dict[str, list[str]] = field(default_factory=dict)  # test name -> op types

    @property
    def run(self) -> int:
        return len(self.passed) + len(self.failed)

    @property
    def pass_rate(self) -> float:
        return len(self.passed) / self.run if self.run else 0.0

    def per_op(self) -> dict[str, tuple[int, int]]:
        """op -> (passed, run) over the tests that use it."""
        table: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
        for name in self.passed:
            for op in self.ops[name]:
                table[op][0] += 1
                table[op][1] += 1
        for name in self.failed:
            for op in self.ops[name]:
                table[op][1] += 1
        return {op: (p, r) for op, (p, r) in sorted(table.items())}


def _node_models() -> dict[str, Any]:
    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {f"{case.name}_cpu": case.model for case in load_model_tests(kind="node")}


def _tests(suite: unittest.TestSuite) -> list[unittest.TestCase]:
    found: list[unittest.TestCase] = []
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            found.extend(_tests(item))
        else:
            found.append(item)
    return found


def run_node_tests(ops: set[str] | None = None, device: str = "cpu") -> Report:
    """Run the supported node tests (optionally only those using one of ``ops``) on ``device``
    (``cpu``: the native backend; ``xla``: the XLA backend, where a test is supported when that
    backend compiles its model)."""
    import onnx.backend.test

    from phi_engine.graph import onnx_backend

    backend = onnx_backend.PhiXlaBackend if device == "xla" else onnx_backend.PhiBackend
    is_supported = (
        onnx_backend.is_supported_on_xla if device == "xla" else onnx_backend.is_supported
    )
    models = _node_models()
    backend_test = onnx.backend.test.BackendTest(backend, __name__)
    backend_test.include(r"^test_.*_cpu$")
    report = Report()
    for test in _tests(backend_test.test_suite):
        name = test._testMethodName
        model = models.get(name)
        if model is None:
            continue  # a "real model" case, which would download its data
        report.ops[name] = sorted({n.op_type for n in model.graph.node})
        if ops is not None and not ops.intersection(report.ops[name]):
            continue
        if not is_supported(model):
            report.unsupported.append(name)
            continue
        result = unittest.TestResult()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            test.run(result)
        problems = result.failures + result.errors
        if problems:
            report.failed[name] = problems[0][1].strip().splitlines()[-1][:300]
        elif result.skipped:
            report.unsupported.append(name)
        else:
            report.passed.append(name)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", help="comma-separated op types: only tests using one of them")
    parser.add_argument("--failures", action="store_true", help="print every failure")
    parser.add_argument("--device", default="cpu", choices=("cpu", "xla"))
    args = parser.parse_args(argv)
    ops = set(args.ops.split(",")) if args.ops else None
    report = run_node_tests(ops, args.device)
    out = io.StringIO()
    print("| op | passed | run |\n|---|---:|---:|", file=out)
    for op, (p, r) in report.per_op().items():
        print(f"| {op} | {p} | {r} |", file=out)
    print(out.getvalue())
    if args.failures:
        for name, message in sorted(report.failed.items()):
            print(f"FAIL {name}: {message}")
    print(
        f"node tests of supported ops: {len(report.passed)} passed of {report.run} "
        f"({100 * report.pass_rate:.1f} %); {len(report.unsupported)} use unsupported ops"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
