"""The Open Inference Protocol (KServe V2, as Triton serves it) under ``/v2``.

Existing clients (``tritonclient.http``, KServe's) work unchanged: server and model metadata,
readiness, ``infer`` with JSON tensors or the binary tensor data extension, the model repository
extension (index, load, unload) and per-model statistics. A V2 *model* is a registered model name
and a *version* its version string; requests go to the deployment serving it. Triton's request
parameters map to our scheduler: ``priority`` (1 is the highest level, 0 the default) to our
classes, ``timeout`` (microseconds) to ``deadline_ms``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from phi_engine._native import require_core
from phi_engine._version import __version__
from phi_engine.engine import Engine
from phi_engine.errors import InvalidRequestError, NotFoundError
from phi_engine.server._auth import Auth
from phi_engine.serving._deployment import Deployment
from phi_engine.serving._inputs import V2_DATATYPES

__all__ = ["find_deployment", "infer_v2", "v2_router"]

# Request bodies: the native decoder (number arrays straight into numpy arrays; ValueError on
# anything that is not JSON). Answers: orjson where installed.
_loads: Callable[[bytes], Any] = require_core().json_loads
try:
    import orjson

    # Output arrays are written by orjson itself: a float32 in its shortest float32 form, which
    # reads back to the same float32 (/v1's answer, built with tolist(), spells it as a float64)
    def _dumps(value: Any) -> bytes:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)

    _ARRAY_KINDS = "fiub"  # what orjson writes from an array itself

except ImportError:  # pragma: no cover - orjson is in the server extra

    def _dumps(value: Any) -> bytes:
        return json.dumps(value).encode()

    _ARRAY_KINDS = ""


_DATATYPE_OF = {dtype: name for name, dtype in V2_DATATYPES.items()}
_HEADER = "inference-header-content-length"
# Triton's priority levels: 1 is the highest; 0 means the model's default.
_PRIORITY = {0: "normal", 1: "ultra-high", 2: "high", 3: "normal"}


def _find(engine: Engine, name: str, version: str | None) -> Deployment:
    """The deployment serving model ``name`` (at ``version``, if given)."""
    for dep in engine.deployments():
        record = dep.primary.record
        if record.name == name and (version is None or record.version == version):
            return dep
    what = name if version is None else f"{name} version {version}"
    raise NotFoundError(f"no deployment serves model {what}", field="model_name")


def _metadata(dep: Deployment) -> dict[str, Any]:
    record = dep.primary.record

    def tensors(specs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "datatype": _DATATYPE_OF.get(np.dtype(t["dtype"]), "BYTES"),
                "shape": [d if isinstance(d, int) else -1 for d in (t.get("shape") or [])],
            }
            for name, t in specs.items()
        ]

    return {
        "name": record.name,
        "versions": [record.version],
        "platform": f"onnx ({record.framework})",
        "inputs": tensors(record.inputs),
        "outputs": tensors(record.outputs),
    }


def v2_router(engine: Engine, auth: Auth) -> APIRouter:
    """The ``/v2`` routes over ``engine``."""
    r = APIRouter(prefix="/v2", tags=["v2"])
    read = Depends(auth.require("models:read"))
    infer_scope = Depends(auth.require("infer"))
    deploy = Depends(auth.require("deploy"))

    @r.get("")
    async def server_metadata() -> dict[str, Any]:
        return {
            "name": "phi_engine",
            "version": __version__,
            "extensions": ["binary_tensor_data", "model_repository", "statistics"],
        }

    @r.get("/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @r.get("/health/ready")
    async def ready() -> Response:
        ok = not engine.closed
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @r.get("/models/{name}", dependencies=[read])
    @r.get("/models/{name}/versions/{version}", dependencies=[read])
    async def model_metadata(name: str, version: str | None = None) -> dict[str, Any]:
        return _metadata(_find(engine, name, version))

    @r.get("/models/{name}/ready", dependencies=[read])
    @r.get("/models/{name}/versions/{version}/ready", dependencies=[read])
    async def model_ready(name: str, version: str | None = None) -> Response:
        try:
            ok = _find(engine, name, version).status in ("ready", "updating")
        except NotFoundError:
            ok = False
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 400)

    @r.post("/models/{name}/infer", dependencies=[infer_scope])
    @r.post("/models/{name}/versions/{version}/infer", dependencies=[infer_scope])
    async def infer(request: Request, name: str, version: str | None = None) -> Response:
        dep = _find(engine, name, version)
        raw = await request.body()
        body, media_type, headers = await infer_v2(
            engine, dep, name, raw, request.headers.get(_HEADER)
        )
        return Response(body, media_type=media_type, headers=headers)

    @r.get("/models/{name}/stats", dependencies=[read])
    @r.get("/models/{name}/versions/{version}/stats", dependencies=[read])
    async def stats(name: str, version: str | None = None) -> dict[str, Any]:
        dep = _find(engine, name, version)
        snap = dep.metrics.snapshot()
        outcomes = snap.outcomes
        queue_sum = snap.histograms["queue"][1]
        compute_sum = snap.histograms["compute"][1]
        ok = int(outcomes["completed"])
        failed = sum(int(n) for k, n in outcomes.items() if k != "completed")
        return {
            "model_stats": [
                {
                    "name": name,
                    "version": dep.primary.record.version,
                    "inference_count": ok,
                    "execution_count": ok,
                    "inference_stats": {
                        "success": {"count": ok, "ns": int((queue_sum + compute_sum) * 1e9)},
                        "fail": {"count": failed, "ns": 0},
                        "queue": {"count": ok, "ns": int(queue_sum * 1e9)},
                        "compute_infer": {"count": ok, "ns": int(compute_sum * 1e9)},
                    },
                }
            ]
        }

    @r.post("/repository/index", dependencies=[read])
    async def index() -> list[dict[str, str]]:
        served = {d.primary.record.model_id: d for d in engine.deployments()}
        return [
            {
                "name": m.name,
                "version": m.version,
                "state": "READY" if m.model_id in served else "UNAVAILABLE",
            }
            for m in engine.models()
        ]

    @r.post("/repository/models/{name}/load", dependencies=[deploy])
    async def load(name: str) -> dict[str, Any]:
        try:
            return {"name": name, "deployment_id": _find(engine, name, None).deployment_id}
        except NotFoundError:
            pass
        versions = engine.models(name)
        if not versions:
            raise NotFoundError(f"no model named {name!r} is registered", field="model_name")
        dep = await run_in_threadpool(engine.deploy, versions[-1].model_id)
        return {"name": name, "deployment_id": dep.deployment_id}

    @r.post("/repository/models/{name}/unload", dependencies=[deploy])
    async def unload(name: str) -> dict[str, Any]:
        dep = _find(engine, name, None)
        await run_in_threadpool(engine.undeploy, dep.deployment_id)
        return {"name": name}

    return r


async def infer_v2(
    engine: Engine, dep: Deployment, name: str, raw: bytes, header_length: str | None
) -> tuple[bytes, str, dict[str, str]]:
    """One V2 ``infer`` call on ``dep``: the answer's body, media type and extra headers.

    Raises:
        InvalidRequestError: a body, tensor or parameter that does not fit (``field`` names it).
        OverloadedError: shed or rejected by the scheduler.
    """
    header, tensors = _split(raw, header_length)
    inputs = _inputs(header, tensors)
    params = header.get("parameters") or {}
    result = await engine.ainfer(
        dep.deployment_id,
        inputs,
        priority=_priority(params.get("priority", 0)),
        deadline_ms=_deadline(params.get("timeout")),
    )
    return _response(header, name, result.model_version, result.outputs, result.model_sha256)


def find_deployment(engine: Engine, name: str, version: str | None) -> Deployment:
    """The deployment serving model ``name`` (at ``version``, if given).

    Raises:
        NotFoundError: none does.
    """
    return _find(engine, name, version)


def _priority(value: Any) -> str | int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequestError(
            "parameters.priority must be a non-negative integer", field="parameters.priority"
        )
    return _PRIORITY.get(value, "low")


def _deadline(timeout_us: Any) -> float | None:
    if timeout_us is None or timeout_us == 0:
        return None
    if isinstance(timeout_us, bool) or not isinstance(timeout_us, int | float) or timeout_us < 0:
        raise InvalidRequestError(
            "parameters.timeout must be microseconds >= 0", field="parameters.timeout"
        )
    try:
        ms = float(timeout_us) / 1000.0
    except OverflowError:
        ms = math.inf
    if not math.isfinite(ms):
        raise InvalidRequestError("parameters.timeout is too large", field="parameters.timeout")
    return ms


def _split(raw: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the binary tensor data after it (binary tensor data extension)."""
    if header_length is None:
        size = len(raw)
    elif header_length.isascii() and header_length.isdigit() and int(header_length) <= len(raw):
        size = int(header_length)
    else:
        raise InvalidRequestError(f"{_HEADER} is not a length within the body", field=_HEADER)
    try:
        header = _loads(raw if size == len(raw) else raw[:size])
    except ValueError as exc:
        raise InvalidRequestError(
            f"the inference request is not JSON: {exc}", field="body"
        ) from exc
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidRequestError("the request needs an 'inputs' list", field="inputs")
    if not header["inputs"]:
        raise InvalidRequestError("the request's 'inputs' list is empty", field="inputs")
    params = header.get("parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise InvalidRequestError("parameters must be an object", field="parameters")
        if not _flag(params.get("binary_data_output")):
            raise InvalidRequestError(
                "parameters.binary_data_output must be true or false",
                field="parameters.binary_data_output",
            )
    if header.get("id") is not None and not isinstance(header["id"], str):  # null: no id
        raise InvalidRequestError("id must be a string", field="id")
    outputs = header.get("outputs")
    if outputs is not None and not (
        isinstance(outputs, list)
        and all(
            isinstance(o, dict)
            and isinstance(o.get("name"), str)
            and (p := _params(o.get("parameters"))) is not None
            and _flag(p.get("binary_data"))
            for o in outputs
        )
    ):
        raise InvalidRequestError(
            "outputs must be a list of {name, parameters?: {binary_data?: bool}} objects",
            field="outputs",
        )
    return header, raw[size:]


def _flag(value: Any) -> bool:
    """Whether a boolean parameter is one: true, false, or null/absent (not 1 or "yes")."""
    return value is None or type(value) is bool


def _params(value: Any) -> dict[str, Any] | None:
    """A ``parameters`` object (absent or null: empty); ``None`` for anything but an object."""
    if value is None:
        return {}
    return value if isinstance(value, dict) else None


def _inputs(header: dict[str, Any], binary: bytes) -> list[dict[str, Any]]:
    """V2 typed tensors, with binary data decoded into arrays of their datatype and shape."""
    out, offset = [], 0
    for t in header["inputs"]:
        if not isinstance(t, dict):
            raise InvalidRequestError("each input must be an object", field="inputs")
        name, params = t.get("name"), _params(t.get("parameters"))
        if not isinstance(name, str) or params is None:
            raise InvalidRequestError(
                "each input needs a string name and object parameters", field="inputs"
            )
        if not isinstance(t.get("datatype"), str):
            raise InvalidRequestError(
                f"input {name!r} needs a datatype string (FP32, INT64, ...)",
                field=f"{name}.datatype",
            )
        size = params.get("binary_data_size")
        if size is None:
            out.append(t)
            continue
        field = f"{name}.parameters.binary_data_size"
        dtype = V2_DATATYPES.get(t["datatype"].upper())
        if dtype is None:
            raise InvalidRequestError(
                f"input {name!r}: binary data of datatype {t['datatype']!r} is not supported; "
                f"use one of {', '.join(V2_DATATYPES)}",
                field=f"{name}.datatype",
            )
        if type(size) is not int or size < 0 or size % dtype.itemsize:
            raise InvalidRequestError(
                f"input {name!r}: binary_data_size must be a whole number of "
                f"{dtype.itemsize}-byte {t['datatype'].upper()} values, got {size!r}",
                field=field,
            )
        if offset + size > len(binary):
            raise InvalidRequestError(
                f"input {name!r}: binary_data_size {size} runs past the end of the body "
                f"({len(binary) - offset} bytes left)",
                field=field,
            )
        data = np.frombuffer(
            binary, dtype=dtype.newbyteorder("<"), count=size // dtype.itemsize, offset=offset
        )
        offset += size
        out.append({**t, "data": data.astype(dtype)})
    if offset != len(binary):
        raise InvalidRequestError(
            f"{len(binary) - offset} bytes of binary data after the header belong to no input "
            "(binary_data_size or inference-header-content-length is wrong)",
            field=_HEADER if offset == 0 else "inputs",
        )
    return out


def _response(
    header: dict[str, Any],
    name: str,
    version: str,
    outputs: dict[str, np.ndarray],
    sha256: str = "",
) -> tuple[bytes, str, dict[str, str]]:
    """JSON tensors, or binary ones where the request asked (``binary_data``); the response's
    ``parameters.model_sha256`` names the verified artifact that computed them."""
    wanted = header.get("outputs")
    binary_all = bool((header.get("parameters") or {}).get("binary_data_output", False))
    names = [o["name"] for o in wanted] if wanted else list(outputs)
    binary = {o["name"] for o in wanted or [] if (o.get("parameters") or {}).get("binary_data")}
    unknown = [n for n in names if n not in outputs]
    if unknown:
        raise InvalidRequestError(f"unknown output {unknown[0]!r}", field="outputs")
    tensors, blobs = [], []
    for n in names:
        array = np.ascontiguousarray(outputs[n])
        entry: dict[str, Any] = {
            "name": n,
            "datatype": _DATATYPE_OF.get(array.dtype, "BYTES"),
            "shape": list(array.shape),
        }
        if binary_all or n in binary:
            blob = array.astype(array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            flat = array.ravel()
            direct = flat.dtype.isnative and flat.dtype.kind in _ARRAY_KINDS
            entry["data"] = flat if direct else flat.tolist()
        tensors.append(entry)
    body: dict[str, Any] = {"model_name": name, "model_version": version, "outputs": tensors}
    if header.get("id") is not None:
        body["id"] = header["id"]
    if sha256:
        body["parameters"] = {"model_sha256": sha256}
    head = _dumps(body)
    if not blobs:
        return head, "application/json", {}
    return (
        head + b"".join(blobs),
        "application/octet-stream",
        {"Inference-Header-Content-Length": str(len(head))},
    )
