"""``Engine``: everything the product sheet's API does, in process; its state survives restarts.

The engine ties the layers together (DESIGN.md): the registry stores models, the serving layer
runs deployments (slots, schedulers, runners), the observability layer records events and
profiles. The REST adapter only translates HTTP to these methods.

State lives under one home directory (``PHI_ENGINE_HOME``, default ``~/.phi_engine``):
``registry.db`` (models and deployments, SQLite), ``artifacts/`` (content-addressed models),
``events.db`` (the hash-chained event log) and ``jobs/`` (batch jobs and their finished chunks).
An engine started on the same home restores the deployments that were active and resumes the batch
jobs that were running.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import html
import json
import math
import numbers
import os
import secrets
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from phi_engine.errors import (
    ConflictError,
    IntegrityError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PhiEngineError,
    ResourceError,
    UnsupportedError,
)
from phi_engine.observability import Event, EventLog, PruneReport
from phi_engine.registry import Database, Manifest, ModelRecord, Registry
from phi_engine.serving._autoscale import parse_autoscale_request
from phi_engine.serving._control import Controller
from phi_engine.serving._deployment import (
    ROLLING_STEPS,
    STRATEGIES,
    Deployment,
    DeploymentSpec,
    InferenceResult,
)
from phi_engine.serving._inputs import InputLimits
from phi_engine.serving._jobs import Job, JobStore
from phi_engine.serving._policy import priority_class
from phi_engine.serving._slot import Slot, SlotSettings
from phi_engine.serving._specs import (
    build_spec,
    check_planned_memory,
    check_policy,
    spec_from_json,
    spec_json,
)

if TYPE_CHECKING:
    from phi_engine.security import ClientStore, TokenIssuer

__all__ = ["Engine", "InferenceResult"]

# What a loaded model is shared by: (sha256, max_batch, threads per replica, device, precision).
_RunnerKey = tuple[str, int, int, str, str]


def default_home() -> Path:
    """``PHI_ENGINE_HOME``, or ``~/.phi_engine``."""
    return Path(os.environ.get("PHI_ENGINE_HOME") or "~/.phi_engine").expanduser()


class Engine:
    """The one entry point: register, deploy, infer, run jobs, scale, profile, update.

    Args:
        home: The data directory (default :func:`default_home`).
        restore: Restart the deployments recorded as active and resume unfinished batch jobs.
        progress: Show progress bars for downloads, batch jobs and profiling sweeps (default:
            when standard error is a terminal).
        rehash_interval_s: How often every loaded model's stored artifact is hashed again while
            it serves (:meth:`check_integrity`); ``None`` turns it off.
        log_retention_days: Keep audit events this many days: older ones are pruned at start
            and then hourly (:meth:`apply_retention`), and what remains still verifies.
            ``None`` (the default) keeps every event.

    Example::

        eng = phi_engine.Engine(home="/tmp/phi")
        m = eng.register("mlp", "onnx", "1.0.0", "file:///models/mlp.onnx")
        d = eng.deploy(m.model_id)
        r = eng.infer(d.deployment_id, {"x": [[0.1, 0.2, 0.3, 0.4]]}, priority="high")
        r.outputs, r.execution_time_ms
        eng.close()
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        restore: bool = True,
        progress: bool | None = None,
        rehash_interval_s: float | None = 300.0,
        log_retention_days: float | None = None,
    ) -> None:
        for name, value in (
            ("rehash_interval_s", rehash_interval_s),
            ("log_retention_days", log_retention_days),
        ):
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 < value < math.inf
            ):
                raise InvalidRequestError(f"{name} must be a positive number or None", field=name)
        if home is not None and not isinstance(home, str | os.PathLike):
            raise InvalidRequestError(
                f"home must be a directory path, got {type(home).__name__}", field="home"
            )
        self.rehash_interval_s = rehash_interval_s
        self.log_retention_days = log_retention_days
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.progress = sys.stderr.isatty() if progress is None else bool(progress)
        self._open_stores()
        self._deployments: dict[str, Deployment] = {}
        # Loaded models shared by local slots, by _RunnerKey; weak, so that a model no deployment
        # serves is freed. Their measured latencies seed later slots.
        self._runners: weakref.WeakValueDictionary[_RunnerKey, Any] = weakref.WeakValueDictionary()
        self._latency_seeds: dict[_RunnerKey, dict[float, list[float]]] = {}
        self._load_locks: dict[_RunnerKey, threading.Lock] = {}
        self._lock = threading.RLock()
        self._closed = False
        self._stop = threading.Event()
        self._job_threads: dict[str, threading.Thread] = {}
        self._job_stops: dict[str, threading.Event] = {}
        self._control = Controller(
            self.deployments, lambda dep_id, n, why: self.scale(dep_id, n, reason=why), self._events
        )
        if restore:
            self._restore()
        self._control.start()
        self._rehasher: threading.Thread | None = None
        if rehash_interval_s is not None:
            self._rehasher = threading.Thread(
                target=self._rehash_loop,
                args=(rehash_interval_s,),
                name="phi-engine-rehash",
                daemon=True,
            )
            self._rehasher.start()
        self._retainer: threading.Thread | None = None
        if log_retention_days is not None:
            with contextlib.suppress(PhiEngineError):  # refused: logged, and the events kept
                self.apply_retention()
            self._retainer = threading.Thread(
                target=self._retention_loop, name="phi-engine-retention", daemon=True
            )
            self._retainer.start()

    def _open_stores(self) -> None:
        """Open the registry, event log and job store under ``home``.

        Raises:
            InvalidRequestError: ``home`` (or a store in it) is not a usable directory or
                database: a file, a path too long, a corrupt ``registry.db`` (``field="home"``).
        """
        opened: list[Any] = []
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            self._db = Database(self.home / "registry.db")
            opened.append(self._db)
            self._registry = Registry(self.home, self._db)
            self._events = EventLog(self.home / "events.db")
            opened.append(self._events)
            self._jobs = JobStore(self.home / "jobs")
        except BaseException as exc:
            for store in reversed(opened):
                with contextlib.suppress(Exception):
                    store.close()
            if isinstance(exc, OSError | ValueError | sqlite3.Error):
                raise InvalidRequestError(
                    f"cannot use {str(self.home)!r} as the engine home: {exc}", field="home"
                ) from exc
            raise

    # ---- models -------------------------------------------------------------------------------

    def register(
        self,
        model_name: str,
        framework: str,
        version: str,
        storage_url: str,
        *,
        sha256: str | None = None,
        model_card: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        signature: str | None = None,
        signer: str | None = None,
    ) -> ModelRecord:
        """Register a model version: fetch, verify, compile (a model that cannot run is refused).

        ``storage_url`` is an ``.onnx`` file, a model directory, or a tar/zip archive of one
        (see :meth:`phi_engine.registry.Registry.register`). The per-file SHA-256 manifest of
        what arrived is pinned with the record (:meth:`manifest`). ``sha256`` pins the
        manifest's digest (for one file, its SHA-256; for an archive, its own SHA-256 works
        too). ``signature`` (base64 Ed25519 over ``b"phi-engine artifact sha256 " +
        <manifest digest>``, as :func:`phi_engine.registry.sign_manifest` makes it) and
        ``signer`` (the name of a key pinned with :meth:`trust_key`) make the registration
        verify the publisher's signature; it is verified again at every load. ``signature`` may
        instead be an OpenSSF model signing bundle (the JSON ``model_signing sign key`` writes,
        with ``signer`` an EC key), whose file list must equal the manifest.

        Returns:
            The stored record; ``model_id`` names it from now on.

        Raises:
            InvalidRequestError: a bad field or an unreachable ``storage_url``.
            UnsupportedError: a framework or op that is not supported.
            IntegrityError: the artifact does not match ``sha256``.
            ConflictError: the name and version are already registered.
        """
        self._check_open()
        record = self._registry.register(
            model_name,
            framework,
            version,
            storage_url,
            sha256=sha256,
            model_card=model_card,
            metadata=metadata,
            signature=signature,
            signer=signer,
            progress=self.progress,
        )
        self._note(
            "model_registered",
            model_id=record.model_id,
            model_name=record.name,
            model_version=record.version,
            sha256=record.sha256,
        )
        return record

    def manifest(self, model_id: str) -> Manifest:
        """The per-file SHA-256 manifest pinned when ``model_id`` was registered. Raises
        ``NotFoundError``."""
        self._check_open()
        return self._registry.manifest(model_id)

    def models(self, name: str | None = None) -> list[ModelRecord]:
        """Registered models (of one name, if given), oldest first."""
        self._check_open()
        return self._registry.list(name)

    def model(self, model_id: str) -> ModelRecord:
        """A registered model. Raises ``NotFoundError``."""
        self._check_open()
        return self._registry.get(model_id)

    def trust_key(self, name: str, public_key: str) -> None:
        """Pin a publisher's public key under ``name``: Ed25519 (PEM, or its 32 raw bytes in
        base64 or hex) for phi_engine signatures, or an EC P-256/P-384/P-521 key in PEM for
        OpenSSF model signing bundles; registrations then name it as ``signer`` (logged)."""
        self._check_open()
        self._registry.trust_key(name, public_key)
        self._note("key_trusted", name=name)

    def delete_model(self, model_id: str) -> None:
        """Delete a model version; refused (``ConflictError``) while a deployment serves it."""
        self._check_open()
        self._registry.delete(model_id)
        self._note("model_deleted", model_id=model_id)

    # ---- deployments --------------------------------------------------------------------------

    def deploy(
        self,
        model_id: str,
        execution_mode: str = "local",
        resource_allocation: Mapping[str, Any] | None = None,
        scaling_policy: str | Mapping[str, Any] | None = "fixed",
        *,
        placement: str = "strict",
        execution_policy: str = "phi-optimized",
        max_batch: int = 32,
        slo_ms: Mapping[str, float] | None = None,
        limits: InputLimits | None = None,
        precision: str = "fp32",
    ) -> Deployment:
        """Deploy a registered model and return once it is loaded and warmed.

        Args:
            model_id: The model to serve.
            execution_mode: ``local`` (worker threads here) or ``process`` (worker processes,
                so that a crash cannot take the engine down). ``distributed`` needs Ray.
            resource_allocation: ``cpu`` threads per replica, ``gpu``, ``tpu``, ``memory`` (a
                budget the planned memory must fit, e.g. ``"512MiB"``), ``nodes`` (replicas).
            scaling_policy: ``"fixed"``, ``"auto"`` or an object with the auto-scale fields.
            placement: ``strict`` refuses resources that do not exist; ``best_effort`` places
                what exists and says so in the deployment's placement notes.
            execution_policy: The default scheduling policy (``phi.serving.POLICIES``).
            max_batch: Rows per batch (and per inline request).
            slo_ms: Per priority class, the deadline of requests that give none.
            limits: What one inline request may carry (default: :class:`InputLimits`).
            precision: The matrix products' arithmetic: ``fp32`` (default), or on a GPU
                placement ``tf32``, ``fp16`` or ``bf16`` (tensor cores, float32 accumulation;
                ``bf16`` also on the CPU); as ``phi.compile``'s ``precision``.

        Raises:
            NotFoundError: an unknown model.
            InvalidRequestError, ResourceError: bad fields, or resources that do not exist or a
                model that does not fit the memory budget (naming what is available).
            IntegrityError: the stored artifact no longer matches its hash.
        """
        self._check_open()
        record = self._registry.get(model_id)
        self._check_not_blocked(model_id)
        spec = build_spec(
            execution_mode,
            resource_allocation,
            scaling_policy,
            placement,
            execution_policy,
            max_batch,
            slo_ms,
            limits,
            precision,
        )
        deployment_id = "dep_" + secrets.token_hex(8)
        # The row is written first, as 'starting': it reserves the model (a delete is refused
        # while any row but a stopped one names it) during the slow load below.
        now = time.time()
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO deployments (deployment_id, model_id, candidate_model_id, status,"
                " spec, created_at, updated_at) VALUES (?, ?, NULL, 'starting', ?, ?, ?)",
                (deployment_id, model_id, json.dumps(spec_json(spec)), now, now),
            )
        try:
            slot = self._build_slot(record, spec, spec.placement.replicas, deployment_id)
        except BaseException:
            with self._db.transaction() as conn:  # a refused deploy leaves no trace
                conn.execute("DELETE FROM deployments WHERE deployment_id = ?", (deployment_id,))
            raise
        dep = Deployment(deployment_id, spec, slot)
        try:
            self._set_status(deployment_id, "active")
        except BaseException:
            dep.stop(drain=False)
            raise
        with self._lock:
            self._deployments[deployment_id] = dep
            self._control.set_policy(deployment_id, dep.spec.scaling)
        self._note(
            "deployed",
            deployment_id=deployment_id,
            model_id=model_id,
            model_version=record.version,
            execution_mode=spec.execution_mode,
            placement=spec.placement.describe(),
        )
        return dep

    def _build_slot(
        self, record: ModelRecord, spec: DeploymentSpec, replicas: int, deployment_id: str
    ) -> Slot:
        """Verify the artifact, load the model, check its memory, warm it up.

        Local slots of the same artifact, batch limit and threads share one compiled model
        (and its shape cache): it was verified and loaded once, and a restart with many
        deployments of one model compiles it once. A shared model's latencies seed the new
        slot's scheduler instead of a second warm-up.
        """
        settings = SlotSettings(
            execution_mode=spec.execution_mode,
            replicas=replicas,
            threads_per_replica=spec.placement.threads_per_replica,
            max_batch=spec.max_batch,
            policy=spec.execution_policy,
            slo_ms=spec.slo_ms,
            device=spec.placement.device,
            precision=spec.precision,
        )
        key: _RunnerKey = (
            record.sha256,
            spec.max_batch,
            settings.threads_per_replica,
            settings.device,
            settings.precision,
        )
        local = spec.execution_mode == "local"
        with self._lock:
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:
            shared = self._runners.get(key) if local else None
            if shared is not None and self._registry.signature_state(record.model_id) == "invalid":
                shared = None  # a signature that no longer verifies: the full check refuses it
            source = None if shared else self._verify(record, deployment_id)
            slot = Slot(record, record.artifact_path, settings, runner=shared, source=source)
            try:
                check_planned_memory(slot, spec)
                seeds = self._latency_seeds.get(key) if local else None
                if seeds:
                    slot.scheduler().seed_latencies(seeds)
                else:
                    slot.warm_up()
                if local:
                    self._runners[key] = slot.runner
                    self._latency_seeds[key] = slot.measured_latencies()
            except BaseException:
                slot.close(drain=False)
                raise
        return slot

    def _verify(self, record: ModelRecord, deployment_id: str) -> bytes:
        """The artifact's bytes, read once and checked against the registered digest (logged
        either way)."""
        try:
            data = self._registry.verified_bytes(record.model_id)
        except IntegrityError as exc:
            self._note(
                "integrity_failed",
                deployment_id=deployment_id,
                level="error",
                model_id=record.model_id,
                message=str(exc)[:300],
            )
            raise
        self._note(
            "integrity_verified",
            deployment_id=deployment_id,
            model_id=record.model_id,
            sha256=record.sha256,
        )
        return data

    def check_integrity(self) -> dict[str, bool]:
        """Hash every serving model's stored artifact again, now (the re-hash loop's step).

        A mismatch takes the deployments serving that model out of readiness (their status
        becomes ``failed``: ``/health/ready`` answers 503 and load balancers stop sending
        traffic) and logs ``integrity_failed``; the model already loaded in memory is the one
        verified at load, so requests sent anyway are still answered by it.

        Returns:
            ``{model_id: matches}`` for every model checked.
        """
        from phi_engine.registry._store import verify_file

        results: dict[str, bool] = {}
        for dep in self.deployments():
            for slot in (dep.primary, dep.candidate):
                if slot is None:
                    continue
                record = slot.record
                if record.model_id not in results:
                    try:
                        verify_file(record.artifact_path, record.sha256)
                        ok = True
                    except (IntegrityError, OSError):
                        ok = False
                    results[record.model_id] = ok
                if not results[record.model_id] and not dep.integrity_failed:
                    dep.integrity_failed = True
                    self._note(
                        "integrity_failed",
                        deployment_id=dep.deployment_id,
                        level="error",
                        model_id=record.model_id,
                        message="the stored artifact no longer matches its registered SHA-256 "
                        "(runtime re-hash); readiness dropped",
                    )
        return results

    def apply_retention(self) -> PruneReport | None:
        """Prune audit events older than ``log_retention_days`` now (the hourly step); logs
        ``logs_pruned`` when any went. ``None`` when no retention is configured.

        Raises:
            PhiEngineError: the events to prune do not verify (they are kept, and the failure
                is logged as ``logs_prune_refused``).
        """
        if self.log_retention_days is None:
            return None
        cutoff = time.time() - self.log_retention_days * 86400.0
        try:
            report = self._events.prune(cutoff)
        except PhiEngineError as exc:
            with contextlib.suppress(PhiEngineError):
                self._events.append("logs_prune_refused", level="error", message=str(exc)[:300])
            raise
        if report.pruned:
            self._note(
                "logs_pruned",
                pruned=report.pruned,
                through_seq=report.through_seq,
                retention_days=self.log_retention_days,
            )
        return report

    def _retention_loop(self) -> None:
        while not self._stop.wait(3600.0):
            with contextlib.suppress(PhiEngineError):
                self.apply_retention()

    def _rehash_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            with contextlib.suppress(PhiEngineError, OSError):
                self.check_integrity()

    def deployments(self) -> list[Deployment]:
        """The deployments this engine serves."""
        with self._lock:
            return list(self._deployments.values())

    def deployment(self, deployment_id: str) -> Deployment:
        """A deployment by id. Raises ``NotFoundError``."""
        self._check_open()
        # One dict read: atomic, no lock needed. An id that is not a string names nothing.
        dep = self._deployments.get(deployment_id) if isinstance(deployment_id, str) else None
        if dep is None:
            raise NotFoundError(f"no deployment {deployment_id!r}", field="deployment_id")
        return dep

    # ---- compliance ---------------------------------------------------------------------------

    def validate(
        self,
        model_id: str | None = None,
        deployment_id: str | None = None,
        *,
        standards: Sequence[str] | None = None,
        server: Any = None,
    ) -> Any:
        """Run the automated security and compliance checks on a model or a deployment.

        Args:
            model_id: The model to assess (or give ``deployment_id``: its serving model).
            deployment_id: A deployment to assess, with its input limits and log.
            standards: Report compliance for these only (default: all the checks map to); the
                sheet's names (``ISO 27001``, ``GDPR``, ``EU AI Act``, ``NIST``) are accepted.
            server: The HTTP server's :class:`~phi_engine.security.ServerSettings` (the server
                passes its own); without it the HTTP checks are ``not_run``.

        Returns:
            A :class:`~phi_engine.security.ComplianceReport`: ``status``, ``risk_score``,
            ``compliance``, every check with its evidence and controls, ``not_assessed`` and
            the disclaimer (it is not a certification).

        Raises:
            InvalidRequestError: neither or both of ``model_id`` and ``deployment_id`` wrong,
                or an unknown standard.
            NotFoundError: an unknown model or deployment.
        """
        from phi_engine.registry._formats import sniff
        from phi_engine.registry._store import sha256_file
        from phi_engine.security import scan_path
        from phi_engine.security._compliance import (
            Evidence,
            assess,
            installed_versions,
            resolve_standards,
        )

        self._check_open()
        wanted = None if standards is None else resolve_standards(standards)
        dep = None
        if deployment_id is not None:
            dep = self.deployment(deployment_id)
            if model_id is not None and model_id != dep.model_id:
                raise InvalidRequestError(
                    f"deployment {deployment_id} serves {dep.model_id}, not {model_id}",
                    field="model_id",
                )
            model_id = dep.model_id
        if model_id is None:
            raise InvalidRequestError("give model_id or deployment_id", field="model_id")
        record = self._registry.get(model_id)
        path = record.artifact_path
        logged = self._events.query()
        events = [
            e
            for e in logged
            if e.fields.get("model_id") == model_id
            or (dep is not None and e.deployment_id == dep.deployment_id)
        ]
        recent = tuple(e.fields for e in logged[-200:])
        chain = self.verify_logs()
        _ = self.clients  # creates the clients table if no client was ever made
        schemes = tuple(
            str(r["secret_hash"]).split("$")[1] if str(r["secret_hash"]).count("$") >= 2 else "?"
            for r in self._db.query("SELECT secret_hash FROM auth_clients")
        )
        evidence = Evidence(
            model_id=model_id,
            framework=record.framework,
            artifact_kind=sniff(path),
            scan=scan_path(path),
            sha256_pinned=self._registry.sha256_pinned(model_id),
            sha256_matches=sha256_file(path)[0] == record.sha256,
            model_card=record.model_card,
            metadata=record.metadata,
            deployment_id=None if dep is None else dep.deployment_id,
            limits=None if dep is None else dep.spec.limits,
            log_events=len(events),
            chain_ok=chain.ok,
            chain_reason=chain.reason,
            retention_days=self.log_retention_days,
            recent_log_fields=recent,
            runtime_rehash_s=self.rehash_interval_s,
            signature=self._registry.signature_state(model_id),
            jwt_algorithm=self.tokens.algorithm,
            jwt_lifetime_s=self.tokens.lifetime_s,
            jwt_issuer=self.tokens.issuer,
            jwt_audience=self.tokens.audience,
            secret_schemes=schemes,
            kill_switch=True,
            blocked=self.blocked(model_id) is not None,
            server=server,
            versions=installed_versions(),
        )
        report = assess(evidence, wanted)
        self._note(
            "validated",
            model_id=model_id,
            status=report.status,
            risk_score=report.risk_score,
        )
        return report

    # ---- the kill switch ----------------------------------------------------------------------

    def kill_switch(self, model_id: str, reason: str, *, actor: str = "library") -> list[str]:
        """Take a model out of service at once, and keep it out until :meth:`lift_kill_switch`.

        Every deployment serving it stops without draining (requests it queued end with
        ``OverloadedError``, reason ``closed``, rather than being answered by the model), an
        update moving to it is rolled back the same way, and deploying or updating to it is
        refused. The call is logged (``kill_switch``: model, actor, reason, deployments).

        Args:
            model_id: The model version to stop.
            reason: Why (kept with the block and in the log; 1-500 characters).
            actor: Who (the HTTP API passes the token's client id).

        Returns:
            The ids of the deployments stopped or rolled back.

        Raises:
            NotFoundError: an unknown model.
            InvalidRequestError: an empty or overlong reason.
        """
        self._check_open()
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 500:
            raise InvalidRequestError("reason must be 1-500 characters", field="reason")
        self._registry.get(model_id)
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO model_blocks (model_id, reason, actor, blocked_at) "
                "VALUES (?, ?, ?, ?)",
                (model_id, reason.strip(), str(actor), time.time()),
            )
        touched = []
        for dep in self.deployments():
            if dep.model_id == model_id:
                with contextlib.suppress(NotFoundError):  # undeployed meanwhile: stopped anyway
                    self.undeploy(dep.deployment_id, drain=False, status="killed")
                touched.append(dep.deployment_id)
            elif dep.candidate_model_id == model_id:
                dep.rollback(drain=False)
                self._persist(dep)
                touched.append(dep.deployment_id)
        self._note(
            "kill_switch",
            level="error",
            model_id=model_id,
            actor=str(actor),
            reason=reason.strip(),
            deployments=touched,
        )
        return touched

    def lift_kill_switch(self, model_id: str, *, actor: str = "library") -> None:
        """Allow a model blocked by :meth:`kill_switch` to be deployed again (logged).

        Raises:
            NotFoundError: the model is not blocked.
        """
        self._check_open()
        if not isinstance(model_id, str):
            raise NotFoundError(f"model {model_id!r} is not blocked", field="model_id")
        with self._db.transaction() as conn:
            cur = conn.execute("DELETE FROM model_blocks WHERE model_id = ?", (model_id,))
        if cur.rowcount == 0:
            raise NotFoundError(f"model {model_id!r} is not blocked", field="model_id")
        self._note("kill_switch_lifted", level="warning", model_id=model_id, actor=str(actor))

    def blocked(self, model_id: str) -> dict[str, Any] | None:
        """The kill switch's block on a model (``reason``, ``actor``, ``blocked_at``), if any."""
        if not isinstance(model_id, str):
            return None
        rows = self._db.query(
            "SELECT reason, actor, blocked_at FROM model_blocks WHERE model_id = ?", (model_id,)
        )
        return dict(rows[0]) if rows else None

    def _check_not_blocked(self, model_id: str) -> None:
        block = self.blocked(model_id)
        if block is not None:
            raise ConflictError(
                f"model {model_id} is stopped by the kill switch ({block['reason']}); "
                "lift it first",
                field="model_id",
            )

    def undeploy(self, deployment_id: str, drain: bool = True, *, status: str = "stopped") -> None:
        """Stop a deployment for good (answering what it queued when ``drain``)."""
        self._check_open()
        # One caller claims it (the others find it gone). The status is written after the
        # claim, outside the lock: a write waiting on the database must not hold up every
        # lookup of the other deployments. If it fails, the deployment is put back.
        with self._lock:
            dep = self.deployment(deployment_id)
            del self._deployments[deployment_id]
            self._control.set_policy(deployment_id, None)
        try:
            self._set_status(deployment_id, status)
        except BaseException:
            with self._lock:
                self._deployments.setdefault(deployment_id, dep)
                self._control.set_policy(deployment_id, dep.spec.scaling)
            raise
        dep.stop(drain=drain)
        self._note("undeployed", deployment_id=deployment_id, status=status)

    def _set_candidate(self, deployment_id: str, model_id: str | None) -> None:
        try:
            with self._db.transaction() as conn:
                conn.execute(
                    "UPDATE deployments SET candidate_model_id = ?, updated_at = ? "
                    "WHERE deployment_id = ?",
                    (model_id, time.time(), deployment_id),
                )
        except sqlite3.IntegrityError as exc:  # deleted since it was looked up
            raise NotFoundError(f"no model {model_id!r}", field="model_id") from exc

    def _set_status(self, deployment_id: str, status: str) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE deployments SET status = ?, updated_at = ? WHERE deployment_id = ?",
                (status, time.time(), deployment_id),
            )

    def _note(self, event: str, **fields: Any) -> None:
        """Log an event after a change is committed: the change stands even if the log refuses
        a field (e.g. a model name that looks like a credential), so the caller is not told it
        failed."""
        with contextlib.suppress(PhiEngineError):
            self._events.append(event, **fields)

    # ---- inference ----------------------------------------------------------------------------

    def submit(
        self,
        deployment_id: str,
        inputs: Any,
        *,
        priority: str | int = "normal",
        deadline_ms: float | None = None,
        execution_policy: str | None = None,
        tenant: str = "default",
    ) -> Future[InferenceResult]:
        """Queue an inference request; the future resolves to an :class:`InferenceResult`.

        Args:
            deployment_id: Where to send it.
            inputs: Inline tensors: ``{name: rows}``, a list (single-input models), or V2-style
                typed tensors. Each input needs its leading batch axis.
            priority: ``low``, ``normal``, ``high``, ``ultra-high`` or an integer class.
            deadline_ms: Time from now by which it must finish, or it is shed.
            execution_policy: A policy for this request (default: the deployment's).
            tenant: Who sent it (fairness is per tenant).

        Raises:
            NotFoundError: an unknown deployment.
            InvalidRequestError: inputs or fields that do not fit (``field`` names them).
        """
        check_policy(execution_policy)
        dep = self.deployment(deployment_id)
        future = dep.submit(
            inputs,
            priority=priority,
            deadline_ms=deadline_ms,
            execution_policy=execution_policy,
            tenant=tenant,
        )
        future.add_done_callback(lambda f: self._note_failure(deployment_id, f))
        return future

    def infer(
        self,
        deployment_id: str,
        inputs: Any,
        *,
        priority: str | int = "normal",
        deadline_ms: float | None = None,
        execution_policy: str | None = None,
        tenant: str = "default",
    ) -> InferenceResult:
        """Run an inference request and wait: the result, or the request's error raised here.

        Takes :meth:`submit`'s arguments. On an idle deployment the request runs in the calling
        thread (the scheduler still decides; see ``Deployment.infer``), saving two hand-offs.

        Raises:
            OverloadedError: shed or rejected by the scheduler (its ``reason`` says why).
            WorkerError: the worker process died and the retry failed.
        """
        check_policy(execution_policy)
        dep = self.deployment(deployment_id)
        try:
            return dep.infer(
                inputs,
                priority=priority,
                deadline_ms=deadline_ms,
                execution_policy=execution_policy,
                tenant=tenant,
            )
        except Exception as exc:
            # Refused requests are the caller's to see; failures of admitted ones are logged.
            if not isinstance(exc, (InvalidRequestError, OverloadedError, ConflictError)):
                self._log_failure(deployment_id, exc)
            raise

    async def ainfer(
        self,
        deployment_id: str,
        inputs: Any,
        *,
        priority: str | int = "normal",
        deadline_ms: float | None = None,
        execution_policy: str | None = None,
        tenant: str = "default",
    ) -> InferenceResult:
        """:meth:`submit` and await the result on the running event loop.

        Takes :meth:`submit`'s arguments. The request waits on an :class:`asyncio.Future` that its
        batch resolves (no thread future per request); cancelling the awaiting task withdraws a
        request still queued.

        Raises:
            OverloadedError: shed or rejected by the scheduler (its ``reason`` says why).
            InvalidRequestError, NotFoundError: as :meth:`submit`.
        """
        check_policy(execution_policy)
        dep = self.deployment(deployment_id)
        try:
            return await dep.ainfer(
                inputs,
                priority=priority,
                deadline_ms=deadline_ms,
                execution_policy=execution_policy,
                tenant=tenant,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, (InvalidRequestError, OverloadedError, ConflictError)):
                self._log_failure(deployment_id, exc)
            raise

    def _note_failure(self, deployment_id: str, future: Future[InferenceResult]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None or isinstance(exc, OverloadedError):
            return  # shed requests are counted and logged in aggregate by the control loop
        self._log_failure(deployment_id, exc)

    def _log_failure(self, deployment_id: str, exc: BaseException) -> None:
        self._note(
            "request_failed",
            deployment_id=deployment_id,
            level="error",
            error=type(exc).__name__,
            message=str(exc)[:300],
        )

    # ---- batch jobs ---------------------------------------------------------------------------

    def run_job(
        self,
        deployment_id: str,
        input_url: str,
        output_url: str | None = None,
        batch_size: int = 128,
        *,
        wait: bool = True,
        priority: str | int = "low",
    ) -> Job:
        """Run a file of rows through a deployment in ``batch_size`` chunks (a batch job).

        Args:
            deployment_id: The deployment that computes it.
            input_url: A ``.npy``, ``.npz``, ``.json``, ``.jsonl`` or ``.parquet`` file of rows.
            output_url: Where the results go (default: beside the input), written atomically.
            batch_size: Rows per chunk.
            wait: Return when it is done; otherwise return at once (poll with :meth:`job`).
            priority: The scheduling class of its requests (jobs default to ``low``).

        Returns:
            The job (finished when ``wait``). The job survives a crash: an engine restarted on
            the same home resumes it without computing a finished chunk twice.
        """
        dep = self.deployment(deployment_id)
        if not isinstance(input_url, str):
            raise InvalidRequestError("input_url must be a path or URL string", field="input_url")
        if output_url is not None and not isinstance(output_url, str):
            raise InvalidRequestError(
                "output_url must be a path or URL string (batch_size is the fourth argument)",
                field="output_url",
            )
        # Refused now, not when the job's first chunk is submitted (a job created and failed).
        priority_class(priority, len(dep.primary.scheduler().config.class_weights))
        specs = dep.primary.inputs
        job = self._jobs.create(
            deployment_id,
            input_url,
            output_url,
            batch_size,
            [s.name for s in specs],
            {s.name: s.dtype for s in specs},
            output_names=list(dep.primary.record.outputs),
        )
        self._note(
            "job_created", deployment_id=deployment_id, job_id=job.job_id, rows=job.rows_total
        )
        thread = self._start_job(job.job_id, deployment_id, priority)
        if wait:
            thread.join()
        return self._jobs.get(job.job_id)

    def _start_job(self, job_id: str, deployment_id: str, priority: str | int) -> threading.Thread:
        stop = threading.Event()

        def body() -> None:
            try:
                job = self._jobs.run(
                    job_id,
                    lambda chunk: self._infer_chunk(deployment_id, chunk, priority),
                    progress=self.progress,
                    stop=stop,
                    pause=self._stop,  # close(): resumable, unlike cancel_job()
                )
                if job.status == "queued":
                    self._note("job_paused", deployment_id=deployment_id, job_id=job_id)
                    return
                self._note(
                    "job_finished",
                    deployment_id=deployment_id,
                    job_id=job_id,
                    status=job.status,
                    level="info" if job.status == "completed" else "warning",
                )
            except PhiEngineError as exc:
                self._note(
                    "job_failed",
                    deployment_id=deployment_id,
                    job_id=job_id,
                    level="error",
                    message=str(exc)[:300],
                )

        thread = threading.Thread(target=body, name=f"phi-job-{job_id}", daemon=True)
        with self._lock:
            self._job_threads[job_id] = thread
            self._job_stops[job_id] = stop
        thread.start()
        return thread

    def _infer_chunk(
        self, deployment_id: str, chunk: dict[str, np.ndarray], priority: str | int
    ) -> dict[str, np.ndarray]:
        dep = self.deployment(deployment_id)
        rows = next(iter(chunk.values())).shape[0]
        step = dep.spec.max_batch
        futures = [
            dep.submit({k: v[i : i + step] for k, v in chunk.items()}, priority=priority)
            for i in range(0, rows, step)
        ]
        parts = [f.result() for f in futures]
        return {k: np.concatenate([p.outputs[k] for p in parts]) for k in parts[0].outputs}

    def job(self, job_id: str) -> Job:
        """A batch job's state. Raises ``NotFoundError``."""
        return self._jobs.get(job_id)

    def jobs(self, deployment_id: str | None = None) -> list[Job]:
        """Batch jobs (of one deployment, if given)."""
        return self._jobs.list(deployment_id)

    def cancel_job(self, job_id: str) -> Job:
        """Stop a running job after its current chunk (it can be resumed later)."""
        if not isinstance(job_id, str):
            raise NotFoundError(f"no job {job_id!r}", field="job_id")
        with self._lock:
            stop = self._job_stops.get(job_id)
            thread = self._job_threads.get(job_id)
        if stop is not None and thread is not None and thread.is_alive():
            stop.set()
            thread.join()
            return self._jobs.get(job_id)
        return self._jobs.cancel(job_id)

    # ---- logs ---------------------------------------------------------------------------------

    def logs(
        self,
        deployment_id: str | None = None,
        *,
        since: Any = None,
        level: str | None = None,
        limit: int | None = None,
        follow: bool = False,
        timeout_s: float | None = None,
    ) -> Iterator[Event]:
        """The event log (of one deployment, if given): oldest first.

        Args:
            since: Events at or after this time (unix seconds, datetime or ISO-8601).
            level: The least level shown (``debug``, ``info``, ``warning``, ``error``).
            limit: The most recent ``limit`` events.
            follow: Keep yielding new events as they happen (until ``timeout_s`` passes with
                none, or the engine closes).
        """
        self._check_open()
        if deployment_id is not None:
            self._known_deployment(deployment_id)
        if follow:
            return self._events.follow(
                deployment_id, since=since, level=level, stop=self._stop, timeout_s=timeout_s
            )
        return iter(self._events.query(deployment_id, since=since, level=level, limit=limit))

    def verify_logs(self, deployment_id: str | None = None) -> Any:
        """Recompute the event log's hash chains and report the first break, if any."""
        return self._events.verify(deployment_id)

    def _known_deployment(self, deployment_id: str) -> None:
        rows = (
            self._db.query("SELECT 1 FROM deployments WHERE deployment_id = ?", (deployment_id,))
            if isinstance(deployment_id, str)
            else []
        )
        if not rows:
            raise NotFoundError(f"no deployment {deployment_id!r}", field="deployment_id")

    # ---- scaling ------------------------------------------------------------------------------

    def autoscale(
        self,
        deployment_id: str,
        *,
        replicas_min: int | None = None,
        replicas_max: int | None = None,
        gpu_min: int | None = None,
        gpu_max: int | None = None,
        tpu_enabled: bool | None = None,
        threshold: float | str | None = None,
        queue_delay_ms: float | None = None,
    ) -> dict[str, Any]:
        """Turn on (or retune) auto-scaling of a deployment's replicas.

        Replicas follow measured utilization and queue delay toward ``threshold`` between the
        bounds, with up/down stabilisation windows (see ``phi_engine.serving._autoscale``).

        Returns:
            ``{"status", "scaling_mode": "adaptive", "gpu_allocated", "replicas", "policy"}``:
            ``gpu_allocated`` is the GPUs really in use (0 on a CPU deployment).
        """
        dep = self.deployment(deployment_id)
        policy = parse_autoscale_request(
            replicas_min=replicas_min,
            replicas_max=replicas_max,
            gpu_min=gpu_min,
            gpu_max=gpu_max,
            tpu_enabled=tpu_enabled,
            threshold=threshold,
            queue_delay_ms=queue_delay_ms,
            current=dep.spec.scaling,
            capacity=dep.spec.placement.max_replicas,
        )
        if policy.device != "cpu" and policy.device != dep.spec.placement.device:
            raise UnsupportedError(
                f"the deployment runs on {dep.spec.placement.device}; "
                f"{policy.device} replicas are not available here",
                field="tpu_enabled" if policy.device == "xla" else "gpu_min",
            )
        dep.spec.scaling = policy
        with self._lock:
            self._control.set_policy(deployment_id, policy)
        self._persist(dep)
        target = min(max(dep.replicas, policy.replicas_min), policy.replicas_max)
        if target != dep.replicas:
            self.scale(deployment_id, target, reason="bounds changed")
        self._note(
            "autoscale_configured",
            deployment_id=deployment_id,
            replicas_min=policy.replicas_min,
            replicas_max=policy.replicas_max,
            threshold=policy.threshold,
        )
        return {
            "status": "success",
            "scaling_mode": "adaptive",
            "gpu_allocated": len(dep.spec.placement.gpus) * dep.replicas,
            "replicas": dep.replicas,
            "policy": policy.to_dict(),
        }

    def scale(self, deployment_id: str, replicas: int, *, reason: str = "requested") -> Deployment:
        """Set a deployment's replica count now (the new replicas are up before traffic moves)."""
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise InvalidRequestError("replicas must be a positive integer", field="replicas")
        dep = self.deployment(deployment_id)
        if replicas == dep.replicas:
            return dep
        most = dep.spec.placement.max_replicas
        if replicas > most:
            raise ResourceError(
                f"{replicas} replicas of {dep.spec.placement.threads_per_replica} thread(s) do not "
                f"fit this machine; at most {most}",
                field="replicas",
            )
        current = dep.primary
        before = current.settings.replicas
        new = current.with_replicas(replicas)
        try:
            check_planned_memory(new, dep.spec)
        except BaseException:
            new.close(drain=False)
            raise
        if not dep.swap_primary(current, new):
            raise ConflictError(
                f"deployment {deployment_id} changed while it was being scaled; try again",
                field="deployment_id",
            )
        self._persist(dep)
        self._note(
            "scaled",
            deployment_id=deployment_id,
            replicas_from=before,
            replicas_to=replicas,
            reason=reason,
        )
        return dep

    # ---- updates ------------------------------------------------------------------------------

    def update(
        self,
        deployment_id: str,
        model_id: str,
        strategy: str = "rolling",
        *,
        canary_percent: float = 10.0,
        step_seconds: float = 1.0,
    ) -> Deployment:
        """Move a live deployment to another model version without failing a request.

        The new version is loaded and warmed before any traffic reaches it; then ``blue_green``
        moves all traffic at once, ``rolling`` moves it in steps (25/50/75/100 %, ``step_seconds``
        apart) and ``canary`` sends it ``canary_percent`` % of requests until :meth:`promote` or
        :meth:`rollback`. Old versions drain: every request they queued is answered.

        Raises:
            NotFoundError: an unknown deployment or model.
            ConflictError: another update is in progress.
            InvalidRequestError: a bad strategy or percentage, or a model whose inputs differ.
        """
        if strategy not in STRATEGIES:
            raise InvalidRequestError(
                f"unknown update strategy {strategy!r}; use one of {', '.join(STRATEGIES)}",
                field="strategy",
            )
        if (
            isinstance(canary_percent, bool)
            or not isinstance(canary_percent, numbers.Real)
            or not 0 < float(canary_percent) < 100
        ):
            raise InvalidRequestError(
                "canary_percent must be a number between 0 and 100 (exclusive)",
                field="canary_percent",
            )
        if (
            isinstance(step_seconds, bool)
            or not isinstance(step_seconds, numbers.Real)
            or not 0 <= step_seconds < math.inf
        ):
            raise InvalidRequestError(
                "step_seconds must be a finite number of seconds >= 0", field="step_seconds"
            )
        dep = self.deployment(deployment_id)
        record = self._registry.get(model_id)
        self._check_not_blocked(model_id)
        dep.claim_update(record)  # one update at a time; the new inputs must match
        old_id = dep.model_id
        try:
            # Recorded before the slow load: the new version is reserved against deletion.
            self._set_candidate(deployment_id, model_id)
            slot = self._build_slot(record, dep.spec, dep.replicas, deployment_id)
        except BaseException:
            dep.release_update()
            with contextlib.suppress(PhiEngineError, sqlite3.Error):
                self._set_candidate(deployment_id, None)
            raise
        try:
            dep.begin_update(slot, strategy, float(canary_percent))
            self._persist(dep)
        except BaseException:
            if dep.candidate is slot:
                dep.rollback()
            else:
                dep.release_update()
                slot.close(drain=False)
            with contextlib.suppress(PhiEngineError, sqlite3.Error):
                self._set_candidate(deployment_id, None)
            raise
        self._note(
            "update_started",
            deployment_id=deployment_id,
            strategy=strategy,
            model_from=old_id,
            model_to=model_id,
        )
        if strategy == "rolling":
            for percent in (*ROLLING_STEPS[1:], 100.0):
                time.sleep(step_seconds)
                dep.set_candidate_percent(percent)
        if strategy != "canary":
            self.promote(deployment_id)
        return dep

    def promote(self, deployment_id: str) -> Deployment:
        """Finish an update: all traffic to the new version; the old one drains."""
        dep = self.deployment(deployment_id)
        old = dep.promote()
        self._persist(dep)
        self._note(
            "updated",
            deployment_id=deployment_id,
            model_from=old.record.model_id,
            model_to=dep.model_id,
            model_version=dep.primary.record.version,
        )
        return dep

    def rollback(self, deployment_id: str) -> Deployment:
        """Abandon an update: all traffic back to the serving version; the new one drains."""
        dep = self.deployment(deployment_id)
        cand = dep.rollback()
        self._persist(dep)
        self._note(
            "rolled_back",
            deployment_id=deployment_id,
            level="warning",
            model_abandoned=cand.record.model_id,
            model_id=dep.model_id,
        )
        return dep

    def _persist(self, dep: Deployment) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE deployments SET model_id = ?, candidate_model_id = ?, spec = ?, "
                "updated_at = ? WHERE deployment_id = ?",
                (
                    dep.model_id,
                    dep.candidate_model_id,
                    json.dumps(spec_json(dep.spec, dep)),
                    time.time(),
                    dep.deployment_id,
                ),
            )

    # ---- profiling ----------------------------------------------------------------------------

    def profile(
        self,
        deployment_id: str,
        batch_sizes: Sequence[int] | None = (1, 8, 32),
        *,
        requests: int = 64,
        deadline_ms: float | None = None,
        live: bool = False,
    ) -> Any:
        """Profile a deployment's model: a sweep over batch sizes, or its live traffic.

        Returns:
            A ``Profile``: latency distribution, throughput per batch size, queue vs compute
            time, per-operator time and suggestions computed from those numbers.
        """
        from phi_engine.observability._profiler import profile_model, summarize_live

        dep = self.deployment(deployment_id)
        if live:
            results = dep.primary.recent_results()
            if not results:
                raise InvalidRequestError(
                    f"deployment {deployment_id!r} has served no requests to profile yet; send "
                    "traffic first, or profile without live for a sweep over batch sizes",
                    field="live",
                )
            return summarize_live(results, dep.primary.recent_batches(), deadline_ms=deadline_ms)
        if batch_sizes is not None and (
            isinstance(batch_sizes, str | bytes)
            or not isinstance(batch_sizes, Sequence)
            or not all(
                isinstance(b, numbers.Integral) and not isinstance(b, bool) for b in batch_sizes
            )
        ):
            raise InvalidRequestError(
                f"batch_sizes must be a list of positive integers, got {batch_sizes!r}",
                field="batch_sizes",
            )
        slot = dep.primary
        model = getattr(slot.runner, "model", None)
        if model is None:  # process mode: measure the same artifact compiled here
            from phi_engine.graph import compile as compile_model

            model = compile_model(str(slot.path), max_batch=dep.spec.max_batch)
        sizes = [b for b in (batch_sizes or (1, 8, 32)) if b <= dep.spec.max_batch] or [1]
        result = profile_model(
            model,
            slot.sample_inputs(1),
            batch_sizes=sizes,
            requests=requests,
            deadline_ms=deadline_ms,
            progress=self.progress,
        )
        self._note("profiled", deployment_id=deployment_id, batch_sizes=list(sizes))
        return result

    # ---- restart ------------------------------------------------------------------------------

    def _restore(self) -> None:
        """Bring back the deployments recorded as active, and resume unfinished jobs."""
        with self._db.transaction() as conn:  # deploys a crash interrupted never served
            conn.execute("DELETE FROM deployments WHERE status = 'starting'")
        rows = self._db.query(
            "SELECT deployment_id, model_id, candidate_model_id, spec FROM deployments "
            "WHERE status = 'active' ORDER BY created_at"
        )
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(rows)))) as pool:
            for row, outcome in zip(rows, pool.map(self._restore_one, rows), strict=True):
                if isinstance(outcome, BaseException):
                    self._note(
                        "restore_failed",
                        deployment_id=row["deployment_id"],
                        level="error",
                        error=type(outcome).__name__,
                        message=str(outcome)[:300],
                    )
        for job in self._jobs.incomplete():
            if job.deployment_id in self._deployments:
                self._start_job(job.job_id, job.deployment_id, "low")

    def _restore_one(self, row: Any) -> Deployment | BaseException:
        try:
            saved = json.loads(row["spec"])
            spec, replicas = spec_from_json(saved)
            dep_id = row["deployment_id"]
            slot = self._build_slot(self._registry.get(row["model_id"]), spec, replicas, dep_id)
            dep = Deployment(row["deployment_id"], spec, slot)
            if row["candidate_model_id"]:
                cand_record = self._registry.get(row["candidate_model_id"])
                dep.claim_update(cand_record)
                cand = self._build_slot(cand_record, spec, replicas, dep_id)
                dep.begin_update(cand, "canary", float(saved.get("candidate_percent", 10.0)))
            with self._lock:
                self._deployments[dep.deployment_id] = dep
                self._control.set_policy(dep.deployment_id, dep.spec.scaling)
            self._note("restored", deployment_id=dep.deployment_id, model_id=dep.model_id)
            return dep
        except Exception as exc:  # one broken deployment must not stop the others coming back
            return exc

    # ---- the rest -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the deployments (answering what they queued) and release the stores.

        Deployments stay recorded as active, so an engine started on the same home serves
        them again.
        """
        if self._closed:
            return
        self._closed = True
        self._stop.set()  # running jobs pause after their current chunk; a restart resumes them
        for t in list(self._job_threads.values()):
            t.join(timeout=30)
        for dep in self.deployments():
            dep.stop(drain=True)
        self._control.stop()
        self._events.close()
        self._db.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @functools.cached_property
    def clients(self) -> ClientStore:
        """The OAuth 2.0 clients allowed to call the HTTP API (secrets stored hashed)."""
        from phi_engine.security import ClientStore

        return ClientStore(self._db)

    @functools.cached_property
    def tokens(self) -> TokenIssuer:
        """Issues and verifies the HTTP API's access tokens (key pair kept in ``home/keys``)."""
        from phi_engine.security import TokenIssuer

        return TokenIssuer(self.home / "keys")

    def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        auth: bool = True,
        data_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        """Run the embedded HTTP server in the foreground (needs ``phi_engine[server]``).

        Args:
            host: The address to bind (``auth=False`` is allowed on loopback only).
            port: The port.
            auth: Require OAuth 2.0 bearer tokens; create clients with ``engine.clients.create``
                or ``phi-engine clients create``.
            data_dir: Where batch-job files named by clients live (default ``home/data``).

        Raises:
            InvalidRequestError: a port outside 0-65535 (0: any free port), a ``data_dir``
                that is not (and cannot be made) a directory, or ``auth=False`` off loopback.
        """
        from phi_engine.server import serve

        serve(self, host, port, auth=auth, data_dir=data_dir)

    def _check_open(self) -> None:
        if self._closed:
            raise ConflictError("the engine is closed")

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Engine(home={str(self.home)!r}, deployments={len(self._deployments)})"

    def _repr_html_(self) -> str:
        rows = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (
                    d.deployment_id,
                    d.primary.record.name,
                    d.primary.record.version,
                    d.status,
                    d.replicas,
                    d.spec.execution_mode,
                )
            )
            + "</tr>"
            for d in self.deployments()
        )
        head = "".join(
            f"<th>{h}</th>"
            for h in ("deployment", "model", "version", "status", "replicas", "mode")
        )
        return (
            f"<p><b>phi_engine.Engine</b> at {html.escape(str(self.home))}: "
            f"{len(self.models())} models, {len(self._deployments)} deployments</p>"
            f"<table><tr>{head}</tr>{rows}</table>"
        )
