"""Zero-downtime updates under load: rolling, canary (promote and roll back), blue-green.

Four client threads send requests without pause while the deployment moves between model
versions; no request may fail, every answer must be the one its reported version computes, and
traffic must switch as each strategy says.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from phi_engine import errors
from phi_engine.engine import Engine
from phi_test_models.tiny import mlp, mlp_reference

TOL = {"rtol": 1e-5, "atol": 1e-5}
VERSIONS = {"1.0.0": 0, "2.0.0": 1, "3.0.0": 2, "4.0.0": 3}  # version -> weight seed


@dataclass
class Load:
    """Clients sending requests until stopped, recording (send time, version) of each answer."""

    engine: Engine
    deployment_id: str
    x: np.ndarray
    answers: list[tuple[float, float, str]] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def client(self, k: int) -> None:
        use_submit = k % 2 == 1  # half the clients go through the queued path
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                if use_submit:
                    r = self.engine.submit(self.deployment_id, {"x": self.x}).result(timeout=30)
                else:
                    r = self.engine.infer(self.deployment_id, {"x": self.x})
            except BaseException as exc:
                self.failures.append(exc)
                continue
            want = mlp_reference(self.x, seed=VERSIONS[r.model_version])
            if not np.allclose(r.outputs["y"], want, **TOL):
                self.wrong.append(r.model_version)
            self.answers.append((sent, time.monotonic(), r.model_version))

    def versions(self, after: float, before: float = float("inf")) -> set[str]:
        """Versions of requests sent after ``after`` and answered before ``before``."""
        return {v for s, e, v in list(self.answers) if s > after and e < before}


@pytest.fixture
def load(tmp_path: Path) -> Iterator[tuple[Load, dict[str, str]]]:
    eng = Engine(tmp_path / "home")
    ids = {}
    for version, seed in VERSIONS.items():
        path = mlp(tmp_path / f"m{seed}.onnx", seed=seed)
        ids[version] = eng.register("mlp", "onnx", version, str(path)).model_id
    d = eng.deploy(ids["1.0.0"], resource_allocation={"cpu": 1, "nodes": 2})
    x = np.random.default_rng(11).standard_normal((2, 4)).astype(np.float32)
    state = Load(eng, d.deployment_id, x)
    threads = [threading.Thread(target=state.client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        yield state, ids
    finally:
        state.stop.set()
        for t in threads:
            t.join(timeout=30)
        eng.close()


def wait_for_answers(load: Load, after: float, count: int = 200) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sum(1 for s, _, _ in list(load.answers) if s > after) >= count:
            return
        time.sleep(0.05)
    raise AssertionError("the clients stopped getting answers")


def test_three_updates_under_load_fail_no_request(load: tuple[Load, dict[str, str]]) -> None:
    state, ids = load
    eng, dep = state.engine, state.deployment_id
    t = time.monotonic()
    wait_for_answers(state, t)
    assert state.versions(t) == {"1.0.0"}

    # rolling: traffic moves in steps; once update() returns, only the new version answers
    start = time.monotonic()
    eng.update(dep, ids["2.0.0"], "rolling", step_seconds=0.3)
    done = time.monotonic()
    during = state.versions(start, done)
    wait_for_answers(state, done)
    assert state.versions(done) == {"2.0.0"}
    assert "2.0.0" in during

    # canary: a tenth of the traffic goes to the candidate until promotion
    eng.update(dep, ids["3.0.0"], "canary", canary_percent=10)
    t = time.monotonic()
    wait_for_answers(state, t, count=400)
    t_end = time.monotonic()
    canary = [v for s, e, v in list(state.answers) if s > t and e < t_end]
    share = canary.count("3.0.0") / len(canary)
    assert set(canary) == {"2.0.0", "3.0.0"}
    assert 0.05 < share < 0.2, share
    eng.promote(dep)
    done = time.monotonic()
    wait_for_answers(state, done)
    assert state.versions(done) == {"3.0.0"}

    # blue-green: all traffic moves at once after the new version is warm
    eng.update(dep, ids["4.0.0"], "blue_green")
    done = time.monotonic()
    wait_for_answers(state, done)
    assert state.versions(done) == {"4.0.0"}

    assert not state.failures, state.failures[:3]
    assert not state.wrong
    events = [e.event for e in eng.logs(dep)]
    assert events.count("update_started") == 3 and events.count("updated") == 3
    assert eng.deployment(dep).model_id == ids["4.0.0"]


def test_canary_rollback_under_load(load: tuple[Load, dict[str, str]]) -> None:
    state, ids = load
    eng, dep = state.engine, state.deployment_id
    eng.update(dep, ids["2.0.0"], "canary", canary_percent=30)
    t = time.monotonic()
    wait_for_answers(state, t)
    assert state.versions(t) == {"1.0.0", "2.0.0"}
    with pytest.raises(errors.ConflictError):
        eng.update(dep, ids["3.0.0"], "blue_green")  # one update at a time
    eng.rollback(dep)
    done = time.monotonic()
    wait_for_answers(state, done)
    assert state.versions(done) == {"1.0.0"}
    assert not state.failures and not state.wrong
    assert eng.deployment(dep).candidate_model_id is None
    with pytest.raises(errors.ConflictError):
        eng.promote(dep)  # nothing to promote any more


def test_canary_survives_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Engine(home) as eng:
        a = eng.register("mlp", "onnx", "1.0.0", str(mlp(tmp_path / "a.onnx", seed=0)))
        b = eng.register("mlp", "onnx", "2.0.0", str(mlp(tmp_path / "b.onnx", seed=1)))
        dep = eng.deploy(a.model_id).deployment_id
        eng.update(dep, b.model_id, "canary", canary_percent=50)
        with pytest.raises(errors.ConflictError):
            eng.delete_model(b.model_id)  # in use by the canary
    with Engine(home) as eng:
        d = eng.deployment(dep)
        assert d.model_id == a.model_id and d.candidate_model_id == b.model_id
        assert d.candidate_percent == 50
        versions = {eng.infer(dep, [[0.0, 1.0, 2.0, 3.0]]).model_version for _ in range(10)}
        assert versions == {"1.0.0", "2.0.0"}
        eng.promote(dep)
        assert eng.infer(dep, [[0.0, 1.0, 2.0, 3.0]]).model_version == "2.0.0"
