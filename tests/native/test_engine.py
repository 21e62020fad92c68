"""The engine end to end: register, deploy, infer, jobs, logs, scaling, profiling, restart."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import phi_engine as phi
from phi_engine import errors
from phi_engine.engine import Engine
from phi_test_models.tiny import mlp, mlp_reference

TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def engine(home: Path) -> Iterator[Engine]:
    eng = Engine(home)
    try:
        yield eng
    finally:
        eng.close()


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return mlp(tmp_path / "src" / "mlp.onnx", seed=0)


def snapshot(eng: Engine) -> tuple[list[dict[str, object]], list[str], list[tuple[str, ...]]]:
    """Everything a refused call must leave as it was: models, artifacts, deployment rows."""
    models = [m.to_dict() for m in eng.models()]
    files = sorted(str(p.relative_to(eng.home)) for p in (eng.home / "artifacts").rglob("*"))
    rows = [
        tuple(r)
        for r in eng._db.query("SELECT deployment_id, model_id, status, spec FROM deployments")
    ]
    return models, files, rows


def test_register_deploy_infer_matches_the_model(
    engine: Engine, model_file: Path, rng: np.random.Generator
) -> None:
    m = engine.register("mlp", "onnx", "1.0.0", str(model_file))
    assert engine.model(m.model_id).sha256 == m.sha256
    d = engine.deploy(m.model_id, resource_allocation={"cpu": 1, "nodes": 2})
    assert d.replicas == 2 and d.status == "ready"
    assert "2 replicas" in d.spec.placement.describe()
    x = rng.standard_normal((5, 4)).astype(np.float32)
    for inputs in (
        {"x": x},
        x.tolist(),
        [{"name": "x", "shape": [5, 4], "datatype": "FP32", "data": x.ravel().tolist()}],
    ):
        r = engine.infer(d.deployment_id, inputs, priority="high", deadline_ms=5000)
        np.testing.assert_allclose(r.outputs["y"], mlp_reference(x), **TOL)
        assert r.model_version == "1.0.0" and r.model_id == m.model_id
        assert r.execution_time_ms > 0 and r.queue_time_ms >= 0
        body = json.loads(json.dumps(r.to_dict()))
        assert set(body) >= {"output", "execution_time", "queue_time", "model_version"}


def test_submit_and_ainfer_and_concurrent_clients(
    engine: Engine, model_file: Path, rng: np.random.Generator
) -> None:
    d = engine.deploy(engine.register("mlp", "onnx", "1", str(model_file)).model_id)
    xs = [rng.standard_normal((int(rng.integers(1, 5)), 4)).astype(np.float32) for _ in range(64)]
    futures = [engine.submit(d.deployment_id, {"x": x}) for x in xs]
    for x, f in zip(xs, futures, strict=True):
        np.testing.assert_allclose(f.result(timeout=30).outputs["y"], mlp_reference(x), **TOL)

    async def many() -> list[phi.InferenceResult]:
        return await asyncio.gather(*(engine.ainfer(d.deployment_id, {"x": x}) for x in xs[:8]))

    for x, r in zip(xs[:8], asyncio.run(many()), strict=True):
        np.testing.assert_allclose(r.outputs["y"], mlp_reference(x), **TOL)

    # four client threads calling infer() at once: every answer is its own request's
    wrong: list[int] = []

    def client(k: int) -> None:
        for i in range(k, len(xs), 4):
            got = engine.infer(d.deployment_id, {"x": xs[i]}).outputs["y"]
            if not np.allclose(got, mlp_reference(xs[i]), **TOL):
                wrong.append(i)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not wrong


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ({"x": [[1.0, 2.0, 3.0]]}, "x"),
        ({"x": [[1.0, 2.0, 3.0, float("nan")]]}, "x"),
        ({"x": np.zeros((1, 4), np.float64) + 0.5}, None),  # float64 narrows losslessly: fine
        ({"x": [[1, 2, 3, 4]] * 33}, "x"),  # over max_batch rows
        ({"z": [[1.0, 2.0, 3.0, 4.0]]}, "z"),
        ({"x": "abc"}, "x"),
    ],
)
def test_bad_inputs_are_refused_and_change_nothing(
    engine: Engine, model_file: Path, inputs: object, field: str | None
) -> None:
    d = engine.deploy(engine.register("mlp", "onnx", "1", str(model_file)).model_id)
    before = snapshot(engine)
    if field is None:
        engine.infer(d.deployment_id, inputs)
        return
    with pytest.raises(errors.InvalidRequestError) as info:
        engine.infer(d.deployment_id, inputs)
    assert info.value.field == field
    assert snapshot(engine) == before
    # the deployment still serves
    engine.infer(d.deployment_id, {"x": [[0.0, 1.0, 2.0, 3.0]]})


def test_bad_fields_and_unknown_ids(engine: Engine, model_file: Path, tmp_path: Path) -> None:
    m = engine.register("mlp", "onnx", "1", str(model_file))
    d = engine.deploy(m.model_id)
    before = snapshot(engine)
    cases: list[tuple[type[Exception], str | None, object]] = [
        (errors.NotFoundError, "model_id", lambda: engine.deploy("mdl_0000000000000000")),
        (errors.NotFoundError, "deployment_id", lambda: engine.infer("dep_nope", [[0] * 4])),
        (errors.NotFoundError, "deployment_id", lambda: engine.logs("dep_nope")),
        (errors.InvalidRequestError, "execution_mode", lambda: engine.deploy(m.model_id, "gpu")),
        (
            errors.InvalidRequestError,
            "execution_policy",
            lambda: engine.deploy(m.model_id, execution_policy="fastest"),
        ),
        (
            errors.InvalidRequestError,
            "execution_policy",
            lambda: engine.infer(d.deployment_id, [[0] * 4], execution_policy="quantum"),
        ),
        (
            errors.InvalidRequestError,
            "priority",
            lambda: engine.infer(d.deployment_id, [[0] * 4], priority="urgent"),
        ),
        (
            errors.InvalidRequestError,
            "deadline_ms",
            lambda: engine.infer(d.deployment_id, [[0] * 4], deadline_ms=-1),
        ),
        (
            errors.ResourceError,
            "resource_allocation.gpu",
            lambda: engine.deploy(m.model_id, resource_allocation={"gpu": 2}),
        ),
        (
            errors.ResourceError,
            "resource_allocation.memory",
            lambda: engine.deploy(m.model_id, resource_allocation={"memory": "1KiB"}),
        ),
        (errors.ResourceError, "replicas", lambda: engine.scale(d.deployment_id, 1000)),
        (errors.InvalidRequestError, "replicas", lambda: engine.scale(d.deployment_id, 0)),
        (
            errors.InvalidRequestError,
            "strategy",
            lambda: engine.update(d.deployment_id, m.model_id, "big_bang"),
        ),
        (
            errors.ConflictError,
            "version",
            lambda: engine.register("mlp", "onnx", "1", str(model_file)),
        ),
        (
            errors.InvalidRequestError,
            "storage_url",
            lambda: engine.register("mlp", "onnx", "2", str(tmp_path / "missing.onnx")),
        ),
        (errors.ConflictError, None, lambda: engine.delete_model(m.model_id)),
        (errors.NotFoundError, "job_id", lambda: engine.job("job_0000000000000000")),
    ]
    for cls, field, call in cases:
        with pytest.raises(cls) as info:
            call()  # type: ignore[operator]
        if field is not None:
            assert info.value.field == field, (cls, info.value)
        assert snapshot(engine) == before, info.value


def test_best_effort_placement_says_what_was_placed(engine: Engine, model_file: Path) -> None:
    m = engine.register("mlp", "onnx", "1", str(model_file))
    d = engine.deploy(m.model_id, resource_allocation={"gpu": 2, "cpu": 1}, placement="best_effort")
    assert d.spec.placement.device == "cpu"
    assert any("GPU" in note for note in d.spec.placement.notes)
    assert engine.infer(d.deployment_id, [[0.0, 1.0, 2.0, 3.0]]).outputs["y"].shape == (1, 3)


def test_precision_is_a_deployment_option(home: Path, model_file: Path) -> None:
    """bf16 products run on the CPU and survive a restart; fp16 needs a GPU placement (refused
    when strict, fp32 with a note when best effort); unknown values and process mode refused."""
    x = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
    with Engine(home, progress=False) as eng:
        m = eng.register("mlp", "onnx", "1", str(model_file))
        d = eng.deploy(m.model_id, precision="bf16")
        assert d.spec.precision == "bf16" and d.primary.runner.model.precision == "bf16"
        got = eng.infer(d.deployment_id, {"x": x}).outputs["y"]
        fp32 = eng.infer(eng.deploy(m.model_id).deployment_id, {"x": x}).outputs["y"]
        assert not np.array_equal(got, fp32)  # the products really ran in bf16
        np.testing.assert_allclose(got, mlp_reference(x), rtol=3e-2, atol=3e-2)  # 8 bits
        before = snapshot(eng)
        for kwargs, text in (
            ({"precision": "fp16"}, "needs a GPU placement"),
            ({"precision": "fp8"}, "precision must be one of"),
            ({"precision": "bf16", "execution_mode": "process"}, "'process' runs fp32"),
        ):
            with pytest.raises(errors.InvalidRequestError, match=text) as info:
                eng.deploy(m.model_id, **kwargs)  # type: ignore[arg-type]
            assert info.value.field == "precision"
        assert snapshot(eng) == before
        loose = eng.deploy(
            m.model_id, resource_allocation={"gpu": 1}, placement="best_effort", precision="fp16"
        )
        assert loose.spec.precision == "fp32" and loose.spec.placement.device == "cpu"
        assert any("fp32 instead of fp16" in note for note in loose.spec.placement.notes)
    with Engine(home, progress=False) as eng:
        restored = eng.deployment(d.deployment_id)
        assert restored.spec.precision == "bf16"
        assert restored.primary.runner.model.precision == "bf16"
        np.testing.assert_allclose(eng.infer(d.deployment_id, {"x": x}).outputs["y"], got)


def test_restart_restores_deployments_and_undeploy_is_final(
    home: Path, model_file: Path, rng: np.random.Generator
) -> None:
    x = rng.standard_normal((2, 4)).astype(np.float32)
    with Engine(home) as eng:
        m = eng.register("mlp", "onnx", "1", str(model_file))
        kept = eng.deploy(m.model_id, resource_allocation={"cpu": 1, "nodes": 2}).deployment_id
        gone = eng.deploy(m.model_id).deployment_id
        eng.undeploy(gone)
        with pytest.raises(errors.NotFoundError):
            eng.infer(gone, {"x": x})
    with Engine(home) as eng:
        assert [d.deployment_id for d in eng.deployments()] == [kept]
        assert eng.deployment(kept).replicas == 2
        np.testing.assert_allclose(eng.infer(kept, {"x": x}).outputs["y"], mlp_reference(x), **TOL)
        events = [e.event for e in eng.logs(kept)]
        assert events == ["integrity_verified", "deployed", "integrity_verified", "restored"]
        assert eng.verify_logs().ok


def test_batch_job_through_a_deployment(engine: Engine, model_file: Path, tmp_path: Path) -> None:
    d = engine.deploy(engine.register("mlp", "onnx", "1", str(model_file)).model_id)
    rows = np.random.default_rng(7).standard_normal((203, 4)).astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)
    job = engine.run_job(d.deployment_id, str(tmp_path / "rows.npy"), batch_size=50)
    assert job.status == "completed" and job.rows_done == 203
    np.testing.assert_allclose(np.load(job.output_url), mlp_reference(rows), **TOL)
    assert engine.jobs(d.deployment_id)[0].job_id == job.job_id
    assert [e.event for e in engine.logs(d.deployment_id)][-2:] == ["job_created", "job_finished"]


def test_logs_filters_and_follow(engine: Engine, model_file: Path) -> None:
    m = engine.register("mlp", "onnx", "1", str(model_file))
    d = engine.deploy(m.model_id, resource_allocation={"cpu": 1})
    t0 = time.time()
    engine.scale(d.deployment_id, 2)
    assert [e.event for e in engine.logs(d.deployment_id, since=t0)] == ["scaled"]
    assert list(engine.logs(d.deployment_id, level="error")) == []
    assert len(list(engine.logs(limit=1))) == 1
    seen: list[str] = []
    stream = engine.logs(d.deployment_id, follow=True, timeout_s=2.0)

    def read() -> None:
        seen.extend(e.event for e in stream)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.2)
    engine.scale(d.deployment_id, 1)
    reader.join(timeout=10)
    assert seen[-1] == "scaled" and seen.count("scaled") == 2
    # no payloads in the log: inputs never reach it
    engine.infer(d.deployment_id, [[123.456, 0.0, 0.0, 0.0]])
    dump = json.dumps([e.to_dict() for e in engine.logs()])
    assert "123.456" not in dump


def test_scale_keeps_serving_and_autoscale_follows_load(
    engine: Engine, tmp_path: Path, rng: np.random.Generator
) -> None:
    slow = mlp(tmp_path / "slow.onnx", seed=3, width=256, layers=6)
    m = engine.register("slow", "onnx", "1", str(slow))
    d = engine.deploy(m.model_id, resource_allocation={"cpu": 1, "nodes": 1})
    out = engine.autoscale(
        d.deployment_id, replicas_min=1, replicas_max=2, threshold="30% utilization"
    )
    assert out["scaling_mode"] == "adaptive" and out["gpu_allocated"] == 0
    # short windows so the test sees a decision: the policy object's own fields
    from phi_engine.serving import ScalingPolicy

    policy = ScalingPolicy("auto", 1, 2, threshold=0.3, up_window_s=2.0, down_window_s=60.0)
    engine._control.set_policy(d.deployment_id, policy)
    # Four Python clients keep the replica busy only part of the time: between batches it waits
    # for them (58-67 % busy here with 8 or 32 rows a request). The threshold sits well below that,
    # so the test reads the autoscaler's response to load, not how fast this machine runs Python.
    x = rng.standard_normal((32, 4)).astype(np.float32)
    stop = threading.Event()
    failures: list[BaseException] = []

    def client() -> None:
        while not stop.is_set():
            try:
                engine.infer(d.deployment_id, {"x": x})
            except BaseException as exc:  # any failure fails the test below
                failures.append(exc)

    clients = [threading.Thread(target=client) for _ in range(4)]
    for t in clients:
        t.start()
    deadline = time.monotonic() + 20
    while engine.deployment(d.deployment_id).replicas < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    for t in clients:
        t.join(timeout=30)
    assert not failures
    assert engine.deployment(d.deployment_id).replicas == 2
    scaled = [e for e in engine.logs(d.deployment_id) if e.event == "scaled"]
    assert scaled and scaled[-1].fields["replicas_to"] == 2
    assert "utilization" in str(scaled[-1].fields["reason"])


def test_profile_sweep_and_live(engine: Engine, model_file: Path) -> None:
    d = engine.deploy(engine.register("mlp", "onnx", "1", str(model_file)).model_id)
    prof = engine.profile(d.deployment_id, batch_sizes=[1, 4], requests=16, deadline_ms=100)
    body = prof.to_dict()
    assert {"execution_time", "latency_distribution", "optimization_suggestions"} <= set(body)
    assert sorted({b.batch_size for b in prof.batches}) == [1, 4]
    assert "<table" in prof._repr_html_()
    for _ in range(20):
        engine.infer(d.deployment_id, [[0.0, 1.0, 2.0, 3.0]])
    live = engine.profile(d.deployment_id, live=True)
    assert live.source == "live" and live.latency_distribution["count"] >= 20


def test_html_reprs(engine: Engine, model_file: Path) -> None:
    m = engine.register("mlp", "onnx", "1", str(model_file))
    d = engine.deploy(m.model_id)
    assert "<table" in engine._repr_html_() and d.deployment_id in engine._repr_html_()
    assert "<table" in d._repr_html_() and "<table" in m._repr_html_()


def test_process_mode_serves_the_same_answers(
    engine: Engine, model_file: Path, rng: np.random.Generator
) -> None:
    m = engine.register("mlp", "onnx", "1", str(model_file))
    d = engine.deploy(m.model_id, "process", {"cpu": 1, "nodes": 1})
    x = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(
        engine.infer(d.deployment_id, {"x": x}).outputs["y"], mlp_reference(x), **TOL
    )
    pids = d.primary.runner.pids
    assert pids and os.getpid() not in pids


def test_distributed_mode_is_refused_clearly(engine: Engine, model_file: Path) -> None:
    m = engine.register("mlp", "onnx", "1", str(model_file))
    with pytest.raises(errors.UnsupportedError) as info:
        engine.deploy(m.model_id, "distributed")
    assert info.value.field == "execution_mode"
    assert engine.deployments() == []


def test_shed_requests_are_counted_in_the_log(engine: Engine, tmp_path: Path) -> None:
    slow = mlp(tmp_path / "slow.onnx", seed=3, width=512, layers=8)
    d = engine.deploy(engine.register("slow", "onnx", "1", str(slow)).model_id)
    x = np.zeros((32, 4), np.float32)
    futures = [engine.submit(d.deployment_id, {"x": x}, deadline_ms=0.01) for _ in range(20)]
    refused = 0
    for f in futures:
        try:
            f.result(timeout=30)
        except errors.OverloadedError as exc:
            assert exc.reason in ("deadline_infeasible", "shed")
            refused += 1
    assert refused > 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        shed = [e for e in engine.logs(d.deployment_id) if e.event == "shed"]
        if shed:
            break
        time.sleep(0.2)
    assert sum(int(e.fields["count"]) for e in shed) == refused


def test_integrity_is_verified_at_every_load(home: Path, model_file: Path) -> None:
    with Engine(home) as engine:
        m = engine.register("mlp", "onnx", "1", str(model_file))
        d = engine.deploy(m.model_id)
        assert "integrity_verified" in [e.event for e in engine.logs(d.deployment_id)]
        # a second deployment shares the model already loaded and verified: no second load
        engine.deploy(m.model_id)
    with open(m.artifact_path, "r+b") as f:  # tamper with the stored artifact
        f.seek(10)
        f.write(b"\x00\x01\x02")
    with Engine(home) as engine:  # the restart loads it again: refused, logged, nothing served
        assert engine.deployments() == []
        failed = [e for e in engine.logs(level="error") if e.event == "integrity_failed"]
        assert len(failed) == 2 and failed[-1].fields["model_id"] == m.model_id
        assert {e.event for e in engine.logs(level="error")} >= {"restore_failed"}
        with pytest.raises(errors.IntegrityError):
            engine.deploy(m.model_id)
        assert engine.deployments() == []


def test_refusals_found_in_review_leave_state_as_it_was(
    home: Path, model_file: Path, tmp_path: Path
) -> None:
    wide = mlp(tmp_path / "wide.onnx", seed=5, width=64)
    with Engine(home) as engine:
        # a model name the event log would refuse as credential-like still registers cleanly
        jwt_like = engine.register("eyJhbGci.eyJzdWIi.x", "onnx", "1", str(model_file))
        assert engine.model(jwt_like.model_id).name == "eyJhbGci.eyJzdWIi.x"
        m = engine.register("mlp", "onnx", "1", str(model_file))
        d = engine.deploy(m.model_id, resource_allocation={"cpu": 1})
        # an update to a model with other input shapes is refused before anything is loaded
        other = engine.register("other", "onnx", "1", str(_four_to_eight(tmp_path)))
        with pytest.raises(errors.InvalidRequestError) as info:
            engine.update(d.deployment_id, other.model_id, "canary")
        assert info.value.field == "model_id"
        assert d.candidate_model_id is None and d.status == "ready"
        engine.delete_model(other.model_id)  # nothing reserved it
        # a memory budget holds for scaling too, not only at deploy
        w = engine.register("wide", "onnx", "1", str(wide))
        from phi_engine.serving._specs import planned_memory

        probe = engine.deploy(w.model_id, resource_allocation={"cpu": 1})
        one = planned_memory(probe.primary, probe.spec)
        engine.undeploy(probe.deployment_id)
        budget = one + (planned_memory(probe.primary.with_replicas(2), probe.spec) - one) // 2
        tight = engine.deploy(w.model_id, resource_allocation={"cpu": 1, "memory": budget})
        with pytest.raises(errors.ResourceError):
            engine.scale(tight.deployment_id, 2)
        assert tight.replicas == 1
        # a deploy a crash interrupted ('starting') is removed at the next start
        with engine._db.transaction() as conn:
            conn.execute(
                "INSERT INTO deployments VALUES ('dep_crashed0000000', ?, NULL, 'starting', '{}',"
                " 0, 0)",
                (m.model_id,),
            )
    with Engine(home) as engine:
        rows = engine._db.query(
            "SELECT status FROM deployments WHERE deployment_id = ?", ("dep_crashed0000000",)
        )
        assert rows == []
        kept = engine.deployment(d.deployment_id)
    # a closed engine refuses with a clear error, and forgets nothing
    for call in (
        lambda: engine.models(),
        lambda: engine.register("x", "onnx", "1", str(model_file)),
        lambda: engine.undeploy(kept.deployment_id),
        lambda: engine.infer(kept.deployment_id, [[0.0, 1.0, 2.0, 3.0]]),
    ):
        with pytest.raises(errors.ConflictError):
            call()
    with Engine(home) as engine:
        assert kept.deployment_id in [x.deployment_id for x in engine.deployments()]


def _four_to_eight(tmp_path: Path) -> Path:
    """An MLP that takes x[N, 8]: other inputs than the [N, 4] model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((8, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "eight",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "eight.onnx"
    onnx.save(model, str(path))
    return path
