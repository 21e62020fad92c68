"""Exceptions raised by phi_engine.

Every error phi_engine raises on purpose is a :class:`PhiEngineError`; each subclass maps to one
HTTP status in the REST adapter::

    PhiEngineError                 500  a bug, or a failure with no better class
    ├── InvalidRequestError        400  bad shape, dtype, value, attribute or field
    ├── UnauthorizedError          401  no or invalid credentials
    ├── ForbiddenError             403  credentials lack a scope
    ├── NotFoundError              404  unknown model, deployment, job or op
    ├── ConflictError              409  duplicate name and version, or a state conflict
    ├── OverloadedError            503  shed or rejected by the scheduler (``reason`` says why)
    ├── WorkerError                503  the worker running the request died or stopped
    ├── RateLimitedError           429  too many requests (``retry_after_s`` says when to retry)
    ├── IntegrityError             400  an artifact does not match its pinned hash or signature
    ├── UnsupportedError           400  valid, but not supported here (op, opset, device, framework)
    └── ResourceError              400  asks for resources that do not exist or do not fit

Native kernels raise these too: their messages start with ``[op]``, naming the op.
"""

from __future__ import annotations

__all__ = [
    "ConflictError",
    "ForbiddenError",
    "IntegrityError",
    "InvalidRequestError",
    "NotFoundError",
    "OverloadedError",
    "PhiEngineError",
    "RateLimitedError",
    "ResourceError",
    "UnauthorizedError",
    "UnsupportedError",
    "WorkerError",
]


class PhiEngineError(Exception):
    """Base class of every phi_engine error.

    Attributes:
        status: The HTTP status the REST adapter answers with.
        code: A short machine-readable name of the error class.
        field: The request field at fault, when there is one.
    """

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, str]:
        """The JSON error body ``{"code", "message", "field"?}`` used by the REST adapter."""
        body = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class InvalidRequestError(PhiEngineError, ValueError):
    """The request or call is malformed: bad shape, dtype, value, attribute or field."""

    status = 400
    code = "invalid_request"


class UnauthorizedError(PhiEngineError):
    """No credentials, or credentials that are invalid or expired."""

    status = 401
    code = "unauthorized"


class ForbiddenError(PhiEngineError):
    """The credentials are valid but lack the scope the operation needs."""

    status = 403
    code = "forbidden"


class NotFoundError(PhiEngineError, LookupError):
    """An unknown model, deployment, job, client or op."""

    status = 404
    code = "not_found"


class ConflictError(PhiEngineError):
    """The operation conflicts with existing state (e.g. a duplicate name and version)."""

    status = 409
    code = "conflict"


class OverloadedError(PhiEngineError):
    """The scheduler shed or rejected the request.

    Attributes:
        reason: ``queue_full``, ``deadline_infeasible`` or ``shed``.
    """

    status = 503
    code = "overloaded"

    def __init__(self, message: str, *, reason: str = "shed", field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.reason = reason


class WorkerError(PhiEngineError):
    """The worker running the request died (e.g. its process was killed) and the retry failed too,
    or the deployment was stopped while the request ran."""

    status = 503
    code = "worker_failed"


class RateLimitedError(PhiEngineError):
    """Too many requests for one key; retry after ``retry_after_s`` (HTTP 429, RFC 6585 §4).

    Attributes:
        retry_after_s: Seconds until the key's bucket holds a token again (for ``Retry-After``).
    """

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after_s = retry_after_s


class IntegrityError(PhiEngineError):
    """An artifact does not match its pinned hash or signature."""

    status = 400
    code = "integrity_error"


class UnsupportedError(PhiEngineError):
    """Valid, but not supported here: an op, opset, device, dtype or framework."""

    status = 400
    code = "unsupported"


class ResourceError(PhiEngineError):
    """Resources that do not exist, or a memory budget the model does not fit."""

    status = 400
    code = "resource_error"
