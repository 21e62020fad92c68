"""The product sheet's API under ``/v1``: each route translates to one ``Engine`` method.

Request and response shapes follow ``PRODUCT_SHEET.md`` (a client written against it works
unchanged) with the additions ``API.md`` decides; no business logic lives here. Engine calls that
compute (register, deploy, infer, profile, ...) run in the thread pool, never on the event loop.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from phi_engine.engine import Engine, InferenceResult
from phi_engine.errors import InvalidRequestError, PhiEngineError
from phi_engine.observability import Event
from phi_engine.registry import ModelRecord
from phi_engine.security import TokenClaims
from phi_engine.server._auth import Auth

__all__ = ["InferenceRequest", "inference_body", "v1_router"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterRequest(_Body):
    model_name: str
    framework: str
    version: str
    storage_url: str
    sha256: str | None = None
    model_card: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    signature: str | None = Field(
        None,
        description="base64 Ed25519 signature over the manifest digest, or an OpenSSF model "
        "signing bundle (JSON text); see Engine.register",
    )
    signer: str | None = Field(None, description="the name of a pinned publisher key")


class DeployRequest(_Body):
    model_id: str
    execution_mode: str = "local"
    resource_allocation: dict[str, Any] | None = None
    scaling_policy: str | dict[str, Any] | None = "fixed"
    placement: Literal["strict", "best_effort"] = "strict"
    execution_policy: str = "phi-optimized"
    max_batch: int = Field(32, ge=1, le=4096)
    precision: str = Field(
        "fp32",
        description="the products' arithmetic: fp32, or on a GPU placement tf32, fp16 or bf16 "
        "(bf16 also on the CPU)",
    )


class InferenceInput(_Body):
    data: Any = Field(
        description="inline tensors (a list, {name: rows} or V2 typed tensors), "
        "or the URI of a file of rows (.json, .jsonl, .npy, .npz, .parquet)"
    )


class InferenceRequest(_Body):
    deployment_id: str
    input: InferenceInput
    batch_size: int | None = Field(None, ge=1, description="rows per chunk of a batch job")
    priority: str | int = "normal"
    execution_policy: str | None = None
    deadline_ms: float | None = Field(None, gt=0)
    output_url: str | None = None
    async_: bool = Field(False, alias="async")


class UpdateRequest(_Body):
    model_id: str
    strategy: Literal["rolling", "canary", "blue_green"] = "rolling"
    canary_percent: float = Field(10.0, gt=0, lt=100)
    step_seconds: float = Field(1.0, ge=0, le=600)


class AutoScaleRequest(_Body):
    deployment_id: str
    gpu_min: int | None = None
    gpu_max: int | None = None
    tpu_enabled: bool | None = None
    threshold: float | str | None = None
    replicas_min: int | None = None
    replicas_max: int | None = None
    queue_delay_ms: float | None = None


class ValidateRequest(_Body):
    model_id: str | None = None
    deployment_id: str | None = None
    standards: list[str] | None = None


class KillSwitchRequest(_Body):
    model_id: str
    reason: str = Field(min_length=1, max_length=500)


class ProfileRequest(_Body):
    deployment_id: str
    batch_sizes: list[int] | None = None
    requests: int = Field(64, ge=1, le=100_000)
    deadline_ms: float | None = Field(None, gt=0)
    live: bool = False


def _model_json(record: ModelRecord) -> dict[str, Any]:
    body = record.to_dict()
    body.pop("artifact_path", None)  # where the server keeps its files is not the client's
    return body


def inference_body(result: InferenceResult) -> dict[str, Any]:
    """The answer to an inline ``/v1/inference/run``: the sheet's ``output`` and
    ``execution_time`` (``"12.345ms"``), with the same times as numbers and the request's ids."""
    out = result.to_dict()
    out["execution_time_ms"] = result.execution_time_ms
    out["queue_time_ms"] = result.queue_time_ms
    out["execution_time"] = _ms(result.execution_time_ms)
    out["queue_time"] = _ms(result.queue_time_ms)
    return out


def _actor(claims: TokenClaims | None) -> str:
    """Who made a call, for the audit log: the token's client id (``no-auth``: nobody checked)."""
    return claims.sub if claims is not None else "no-auth"


def _ms(value: float) -> str:
    """The sheet writes times as strings like ``"30ms"``."""
    return f"{value:.3f}ms"


def v1_router(
    engine: Engine, auth: Auth, data_dir: Path, *, allow_private_urls: bool = False
) -> APIRouter:
    """The ``/v1`` routes over ``engine``.

    Files a client names (batch-job rows, a model's ``storage_url``) must live under
    ``data_dir``; a ``storage_url`` fetched over the network must not point at this machine or
    its private network unless ``allow_private_urls``.
    """
    r = APIRouter(prefix="/v1")
    read_models = Depends(auth.require("models:read"))
    write_models = Depends(auth.require("models:write"))
    deploy = Depends(auth.require("deploy"))
    infer = Depends(auth.require("infer"))
    logs_read = Depends(auth.require("logs:read"))

    r.add_api_route(
        "/auth/token",
        auth.token_endpoint,
        methods=["POST"],
        tags=["auth"],
        summary="OAuth 2.0 client credentials (RFC 6749 §4.4): JSON, form or HTTP Basic",
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                k: {"type": "string"}
                                for k in ("client_id", "client_secret", "grant_type", "scope")
                            },
                            "required": ["grant_type"],
                        }
                    }
                }
            }
        },
    )

    @r.post("/models/register", tags=["models"], dependencies=[write_models])
    async def register(body: RegisterRequest) -> dict[str, Any]:
        url = await run_in_threadpool(_source, body.storage_url, data_dir, allow_private_urls)
        try:
            record = await run_in_threadpool(
                engine.register,
                body.model_name,
                body.framework,
                body.version,
                url,
                sha256=body.sha256,
                model_card=body.model_card,
                metadata=body.metadata,
                signature=body.signature,
                signer=body.signer,
            )
        except PhiEngineError as exc:
            raise _as_sent(exc, data_dir, {}) from None
        return {
            "status": "success",
            "model_id": record.model_id,
            "message": f"Model {record.name}:{record.version} registered "
            f"(sha256 {record.sha256}, {record.size_bytes} bytes).",
        }

    @r.get("/models", tags=["models"], dependencies=[read_models])
    async def models() -> dict[str, Any]:
        return {"models": [_model_json(m) for m in engine.models()]}

    @r.get("/models/{model_id}", tags=["models"], dependencies=[read_models])
    async def model(model_id: str) -> dict[str, Any]:
        return _model_json(engine.model(model_id))

    @r.delete("/models/{model_id}", tags=["models"], dependencies=[write_models])
    async def delete_model(model_id: str) -> dict[str, Any]:
        await run_in_threadpool(engine.delete_model, model_id)
        return {"status": "success", "model_id": model_id, "message": "Model deleted."}

    @r.post("/models/deploy", tags=["deployments"], dependencies=[deploy])
    async def deploy_model(body: DeployRequest) -> dict[str, Any]:
        dep = await run_in_threadpool(
            engine.deploy,
            body.model_id,
            body.execution_mode,
            body.resource_allocation,
            body.scaling_policy,
            placement=body.placement,
            execution_policy=body.execution_policy,
            max_batch=body.max_batch,
            precision=body.precision,
        )
        return {
            "status": "success",
            "deployment_id": dep.deployment_id,
            "message": f"Model deployed: {dep.spec.placement.describe()}.",
            "placement": dep.spec.placement.to_dict(),
            "precision": dep.spec.precision,
        }

    @r.get("/deployments", tags=["deployments"], dependencies=[read_models])
    async def deployments() -> dict[str, Any]:
        return {"deployments": [d.info() for d in engine.deployments()]}

    @r.get("/deployments/{deployment_id}", tags=["deployments"], dependencies=[read_models])
    async def deployment(deployment_id: str) -> dict[str, Any]:
        return engine.deployment(deployment_id).info()

    @r.delete("/deployments/{deployment_id}", tags=["deployments"], dependencies=[deploy])
    async def undeploy(deployment_id: str) -> dict[str, Any]:
        await run_in_threadpool(engine.undeploy, deployment_id)
        return {"status": "success", "deployment_id": deployment_id, "message": "Stopped."}

    @r.post("/deployments/{deployment_id}/update", tags=["deployments"], dependencies=[deploy])
    async def update(deployment_id: str, body: UpdateRequest) -> dict[str, Any]:
        dep = await run_in_threadpool(
            engine.update,
            deployment_id,
            body.model_id,
            body.strategy,
            canary_percent=body.canary_percent,
            step_seconds=body.step_seconds,
        )
        return {"status": "success", **dep.info()}

    @r.post("/deployments/{deployment_id}/promote", tags=["deployments"], dependencies=[deploy])
    async def promote(deployment_id: str) -> dict[str, Any]:
        return {"status": "success", **engine.promote(deployment_id).info()}

    @r.post("/deployments/{deployment_id}/rollback", tags=["deployments"], dependencies=[deploy])
    async def rollback(deployment_id: str) -> dict[str, Any]:
        return {"status": "success", **engine.rollback(deployment_id).info()}

    @r.post("/inference/run", tags=["inference"], dependencies=[infer])
    async def run(body: InferenceRequest) -> JSONResponse:
        data = body.input.data
        if isinstance(data, str):
            return await _batch_job(engine, body, data, data_dir)
        if body.async_:
            raise InvalidRequestError(
                "async applies to batch jobs (input.data a file URI)", field="async"
            )
        result = await engine.ainfer(
            body.deployment_id,
            data,
            priority=body.priority,
            deadline_ms=body.deadline_ms,
            execution_policy=body.execution_policy,
        )
        return JSONResponse(inference_body(result))

    @r.get("/inference/{job_id}", tags=["inference"], dependencies=[infer])
    async def job(job_id: str) -> dict[str, Any]:
        return engine.job(job_id).to_dict()

    @r.get("/logs", tags=["logs"], dependencies=[logs_read])
    async def logs(
        request: Request,
        deployment_id: str | None = None,
        since: str | None = None,
        level: str | None = None,
        limit: int | None = Query(None, ge=1, le=100_000),
    ) -> Any:
        if "text/event-stream" in request.headers.get("accept", ""):
            engine.logs(deployment_id, since=since, level=level, limit=1)  # checks the filters
            return StreamingResponse(
                _sse(engine, request, deployment_id, since, level),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-store"},
            )
        found = engine.logs(deployment_id, since=since, level=level, limit=limit)
        return {"logs": [e.to_dict() for e in found]}

    @r.post("/models/auto-scale", tags=["scaling"], dependencies=[deploy])
    async def auto_scale(body: AutoScaleRequest) -> dict[str, Any]:
        fields = body.model_dump(exclude={"deployment_id"})
        return await run_in_threadpool(engine.autoscale, body.deployment_id, **fields)

    @r.post("/models/profile", tags=["profiling"], dependencies=[deploy])
    async def profile(body: ProfileRequest) -> dict[str, Any]:
        prof = await run_in_threadpool(
            engine.profile,
            body.deployment_id,
            body.batch_sizes,
            requests=body.requests,
            deadline_ms=body.deadline_ms,
            live=body.live,
        )
        out: dict[str, Any] = prof.to_dict()
        return out

    security = Depends(auth.require("security"))

    @r.post("/security/validate", tags=["security"], dependencies=[security])
    async def validate(body: ValidateRequest, request: Request) -> dict[str, Any]:
        report = await run_in_threadpool(
            engine.validate,
            body.model_id,
            body.deployment_id,
            standards=body.standards,
            server=getattr(request.app.state, "security_settings", None),
        )
        out: dict[str, Any] = report.to_dict()
        return out

    @r.post("/security/kill-switch", tags=["security"])
    async def kill_switch(
        body: KillSwitchRequest, claims: TokenClaims | None = security
    ) -> dict[str, Any]:
        stopped = await run_in_threadpool(
            engine.kill_switch, body.model_id, body.reason, actor=_actor(claims)
        )
        return {"status": "killed", "model_id": body.model_id, "deployments": stopped}

    @r.delete("/security/kill-switch/{model_id}", tags=["security"])
    async def lift_kill_switch(
        model_id: str, claims: TokenClaims | None = security
    ) -> dict[str, Any]:
        await run_in_threadpool(engine.lift_kill_switch, model_id, actor=_actor(claims))
        return {"status": "lifted", "model_id": model_id}

    return r


async def _batch_job(
    engine: Engine, body: InferenceRequest, data: str, data_dir: Path
) -> JSONResponse:
    """``input.data`` names a file of rows: a batch job, answered when done (or 202 if async)."""
    input_path = _inside(data, data_dir, "input.data")
    output = _inside(body.output_url, data_dir, "output_url") if body.output_url else None
    try:
        job = await run_in_threadpool(
            engine.run_job,
            body.deployment_id,
            str(input_path),
            None if output is None else str(output),
            body.batch_size or 128,
            wait=not body.async_,
        )
    except PhiEngineError as exc:  # named as the client named it: input.data, not input_url
        raise _as_sent(exc, data_dir, {"input_url": "input.data"}) from None
    if body.async_:
        return JSONResponse({"job_id": job.job_id, "status": job.status}, status_code=202)
    elapsed_ms = (job.updated_at - job.created_at) * 1000.0
    out = {
        "output": os.path.relpath(job.output_url, data_dir),
        "execution_time": _ms(elapsed_ms),
        "execution_time_ms": elapsed_ms,
        "job_id": job.job_id,
        "status": job.status,
        "rows": job.rows_done,
    }
    if job.error:
        out["error"] = job.error
    return JSONResponse(out)


def _as_sent(exc: PhiEngineError, data_dir: Path, fields: dict[str, str]) -> PhiEngineError:
    """A client error of an engine call, said in the client's terms: the field as the request
    names it, and files by their name under the data directory (where the server keeps its
    files is not the client's to learn). Bugs (500) pass unchanged."""
    if exc.status >= 500:
        return exc
    if exc.field in fields:
        exc.field = fields[exc.field]
    root = str(data_dir.resolve())
    if root in exc.message:
        exc.message = exc.message.replace(root + os.sep, "").replace(root, ".")
        exc.args = (exc.message,)
    return exc


def _source(url: str, data_dir: Path, allow_private: bool) -> str:
    """A client's ``storage_url``, checked: the server's files are not the client's to read, nor
    its internal network the client's to probe (server-side request forgery)."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() == "file" or len(scheme) == 1:  # a path (or C:\...)
        return str(_inside(url, data_dir, "storage_url"))
    if scheme.lower() in ("http", "https") and not allow_private:
        try:
            host = urlsplit(url).hostname or ""
        except ValueError as exc:  # e.g. "http://[::1/x": an IPv6 host not closed
            raise InvalidRequestError(
                f"storage_url is not a valid URL: {exc}", field="storage_url"
            ) from exc
        try:
            infos = socket.getaddrinfo(host, None)
        except (OSError, UnicodeError, ValueError):
            infos = []  # unresolvable: the fetch will say so
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if not address.is_global:
                raise InvalidRequestError(
                    "storage_url points at this machine or a private network, which this server "
                    "does not fetch from",
                    field="storage_url",
                )
    return url


def _inside(name: str, root: Path, field: str) -> Path:
    """A client's file name, resolved under the server's data directory (never outside it)."""
    path = name.removeprefix("file://")
    if "\x00" in path:
        raise InvalidRequestError(f"{field} must not contain a NUL byte", field=field)
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise InvalidRequestError(
            f"{field} must name a file inside the server's data directory", field=field
        )
    return resolved


async def _sse(
    engine: Engine,
    request: Request,
    deployment_id: str | None,
    since: str | None,
    level: str | None,
) -> AsyncIterator[bytes]:
    """Server-Sent Events: one event per log record as it is appended, until the client goes.

    The log is followed in short windows so that a client that left is noticed within one
    (a comment line keeps idle connections open through proxies).
    """
    last = 0
    start: Any = since
    sentinel = object()
    while not await request.is_disconnected():
        events = iter(
            engine.logs(deployment_id, since=start, level=level, follow=True, timeout_s=2.0)
        )
        while True:
            event = await run_in_threadpool(next, events, sentinel)
            if event is sentinel:
                break
            assert isinstance(event, Event)
            if event.seq <= last:
                continue
            last, start = event.seq, event.timestamp
            body = json.dumps(event.to_dict())
            yield f"id: {event.seq}\nevent: {event.event}\ndata: {body}\n\n".encode()
        yield b": keep-alive\n\n"
