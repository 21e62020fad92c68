"""The compliance check table: every automated check, the controls a pass supports, and the
function that runs it on the :class:`~phi_engine.security._evidence.Evidence`.

Each entry of :data:`CHECKS` is a :class:`Check` (id, title, weight, critical, controls) where
``controls`` maps a standard of :data:`STANDARDS` to the ids of the controls a passing result is
evidence toward, in that standard's own numbering:

- ISO/IEC 27001:2022 Annex A: ``A.5.1``-``A.5.37``, ``A.6.1``-``A.6.8``, ``A.7.1``-``A.7.14``,
  ``A.8.1``-``A.8.34``;
- NIST CSF 2.0 subcategories: ``PR.AA-03``, ``DE.CM-09``... (not the CSF 1.1 ``PR.AC-1`` style);
- NIST AI RMF 1.0 subcategories: ``GOVERN 1.1``, ``MAP 2.2``, ``MEASURE 2.7``, ``MANAGE 2.4``...;
- GDPR and EU AI Act (Regulation (EU) 2024/1689) articles: ``Art. 32(1)(b)``, ``Art. 14(4)(e)``.

Scoring and the report are in :mod:`phi_engine.security._compliance`, which re-exports these
names.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from phi_engine.security._evidence import Evidence

__all__ = [
    "AI_ACT",
    "AI_RMF",
    "CHECKS",
    "CSF",
    "GDPR",
    "ISO",
    "STANDARDS",
    "Check",
    "Outcome",
    "Result",
]

Result = Literal["pass", "warn", "fail", "not_run"]

ISO = "ISO/IEC 27001:2022"
CSF = "NIST CSF 2.0"
AI_RMF = "NIST AI RMF 1.0"
GDPR = "GDPR"
AI_ACT = "EU AI Act"
STANDARDS = (ISO, CSF, AI_RMF, GDPR, AI_ACT)

# Known fixed versions of dependencies on the request path (package, minimum, advisory).
_FIXED_VERSIONS = (
    ("pyjwt", "2.4.0", "CVE-2022-29217: algorithm confusion"),
    ("cryptography", "42.0.0", "CVE-2023-50782: RSA decryption timing oracle"),
    ("starlette", "0.40.0", "CVE-2024-47874: multipart form fields without a size limit"),
    ("python-multipart", "0.0.18", "CVE-2024-53981: denial of service on malformed boundaries"),
    ("uvicorn", "0.11.7", "CVE-2020-7694: log injection"),
    ("onnx", "1.13.0", "CVE-2022-25882: external data path traversal"),
)

_RISK_CLASSES = ("minimal", "limited", "high", "unacceptable")


@dataclass(frozen=True)
class Check:
    """One automated check: its id, what it verifies, weight, whether it is critical, and the
    controls a pass supports (standard -> control ids)."""

    id: str
    title: str
    weight: float
    critical: bool
    controls: Mapping[str, tuple[str, ...]]


Outcome = tuple[Result, str]


def _c(**controls: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    names = {"iso": ISO, "csf": CSF, "rmf": AI_RMF, "gdpr": GDPR, "act": AI_ACT}
    return {names[k]: v for k, v in controls.items()}


# ---- the checks -----------------------------------------------------------------------------


def _artifact_format(e: Evidence) -> Outcome:
    if e.artifact_kind == "onnx":
        return "pass", f"the stored artifact is ONNX by content ({e.framework} export)"
    return "fail", f"the stored artifact is {e.artifact_kind!r}, not ONNX"


def _findings(e: Evidence, prefixes: tuple[str, ...]) -> list[Any]:
    return [f for f in e.scan.findings if f.rule.startswith(prefixes)]


def _unsafe_pickle(e: Evidence) -> Outcome:
    bad = [f for f in _findings(e, ("pickle.",)) if f.severity in ("critical", "high")]
    if bad:
        return "fail", f"{len(bad)} unsafe pickle finding(s), first: {bad[0].message}"
    return "pass", f"no pickle stream in {len(e.scan.files)} scanned file(s)"


def _keras_tf(e: Evidence) -> Outcome:
    bad = _findings(e, ("keras.", "tf."))
    severe = [f for f in bad if f.severity in ("critical", "high")]
    if severe:
        return "fail", f"{severe[0].rule}: {severe[0].message}"
    if bad:
        return "warn", f"{bad[0].rule}: {bad[0].message}"
    return "pass", "no Keras Lambda layer and no TensorFlow op that runs code or touches files"


def _hash_pinned(e: Evidence) -> Outcome:
    if e.sha256_pinned:
        return "pass", "registered with a SHA-256 pin that the fetched bytes matched"
    return "fail", "registered without a SHA-256 pin: the source's bytes were trusted as fetched"


def _hash_at_load(e: Evidence) -> Outcome:
    if e.sha256_matches:
        return "pass", (
            "the stored artifact re-hashes to its registered SHA-256 (checked now; every load "
            "re-hashes it too)"
        )
    return "fail", "the stored artifact no longer matches its registered SHA-256"


def _signature(e: Evidence) -> Outcome:
    if e.signature == "verified":
        return "pass", "an Ed25519 signature over the artifact verifies now against a pinned key"
    if e.signature == "invalid":
        return "fail", "the artifact's signature no longer verifies against its signer's key"
    return "fail", "no signature: the artifact's origin rests on its hash alone"


def _runtime_integrity(e: Evidence) -> Outcome:
    if e.runtime_rehash_s:
        return "pass", f"loaded models are re-hashed every {e.runtime_rehash_s:g} s"
    return "fail", "loaded models are hashed at load only, not re-checked while they serve"


def _auth(e: Evidence) -> Outcome:
    s = e.server
    if s is None:
        return "not_run", "no HTTP server was assessed (validate through the server, or pass it)"
    if not s.auth:
        return "fail", "the server runs with --no-auth: every route is open"
    return "pass", "every route but the open ones needs a bearer token " + (
        f"(open: {', '.join(s.open_routes)})" if s.open_routes else ""
    )


def _jwt(e: Evidence) -> Outcome:
    problems = []
    if e.jwt_algorithm not in ("EdDSA", "RS256", "ES256"):
        problems.append(f"algorithm {e.jwt_algorithm!r}")
    if not 0 < e.jwt_lifetime_s <= 3600:
        problems.append(f"lifetime {e.jwt_lifetime_s} s (over an hour)")
    if not e.jwt_issuer or not e.jwt_audience:
        problems.append("no issuer or audience")
    if problems:
        return "fail", "token settings: " + "; ".join(problems)
    return "pass", (
        f"{e.jwt_algorithm} tokens, {e.jwt_lifetime_s} s lifetime, issuer and audience checked "
        "(one algorithm accepted; exp, iat, nbf, jti, scope required)"
    )


def _secrets(e: Evidence) -> Outcome:
    weak = [s for s in e.secret_schemes if s != "scrypt"]
    if weak:
        return "fail", f"client secrets stored as {weak[0]!r}"
    n = len(e.secret_schemes)
    return "pass", f"{n} client secret(s), stored only as salted scrypt hashes"


def _scopes(e: Evidence) -> Outcome:
    s = e.server
    if s is None:
        return "not_run", "no HTTP server was assessed"
    if not s.auth:
        return "fail", "--no-auth: scopes are not enforced"
    if s.unscoped_routes:
        return "fail", f"routes without a scope: {', '.join(s.unscoped_routes)}"
    return "pass", "every authenticated route requires its scope (403 without it)"


def _rate_limits(e: Evidence) -> Outcome:
    s = e.server
    if s is None:
        return "not_run", "no HTTP server was assessed"
    if s.token_rate > 0:
        return (
            "pass",
            f"the token endpoint allows {s.token_rate:g} requests/s per client and address",
        )
    return "fail", "the token endpoint is not rate limited"


def _transport(e: Evidence) -> Outcome:
    s = e.server
    if s is None or s.host is None:
        return "not_run", "the server's address is not known"
    if s.tls:
        return "pass", f"HTTPS on {s.host}"
    if is_loopback(s.host):
        return (
            "pass",
            f"bound to the loopback address {s.host}: nothing off this machine reaches it",
        )
    return "fail", f"plain HTTP on {s.host}, reachable from the network"


def _input_limits(e: Evidence) -> Outcome:
    lim = e.limits
    if lim is None:
        return "not_run", "no deployment was assessed"
    notes = [f"{lim.max_rows} rows and {lim.max_bytes} bytes per request"]
    if e.server is not None and e.server.max_body_bytes:
        notes.append(f"bodies over {e.server.max_body_bytes} bytes refused")
    if lim.allow_non_finite:
        return "warn", "NaN and infinity are accepted as inputs; " + ", ".join(notes)
    return "pass", "; ".join([*notes, "NaN and infinity refused"])


def _audit_on(e: Evidence) -> Outcome:
    if e.log_events > 0:
        return "pass", f"{e.log_events} events recorded for this model and its deployments"
    return "fail", "no events recorded"


def _audit_chain(e: Evidence) -> Outcome:
    if e.chain_ok is None:
        return "not_run", "the event log was not verified"
    if e.chain_ok:
        return "pass", "the event log's hash chains verify"
    return "fail", f"the event log's hash chain is broken: {e.chain_reason}"


_AI_ACT_LOG_DAYS = 183
"""EU AI Act Art. 19(1) and 26(6): logs of a high-risk system kept at least six months."""


def _retention(e: Evidence) -> Outcome:
    days = e.retention_days
    if not days:
        return "fail", (
            "no retention period is configured: audit events are kept forever "
            "(Engine(log_retention_days=...), phi-engine serve --log-retention-days)"
        )
    kept = f"audit events older than {days:g} days are pruned hourly, and what remains verifies"
    if days < _AI_ACT_LOG_DAYS:
        return "warn", f"{kept}; that is under the six months EU AI Act Art. 19/26(6) asks"
    return "pass", kept


_SECRETISH = re.compile(
    r"(eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.)|(\$scrypt\$)|(-----BEGIN)|(client_secret)", re.I
)
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


def _no_payloads(e: Evidence) -> Outcome:
    for fields in e.recent_log_fields:
        for key, value in fields.items():
            text = str(value)
            if _SECRETISH.search(text) or _SECRETISH.search(key):
                return "fail", f"an event field {key!r} holds what looks like a credential"
            if _EMAIL.search(text):
                return "fail", f"an event field {key!r} holds what looks like an e-mail address"
            if isinstance(value, list) and len(value) > 64:
                return "fail", f"an event field {key!r} holds a long list (a payload?)"
    n = len(e.recent_log_fields)
    return "pass", f"the last {n} events hold no payloads, credentials or e-mail addresses"


def _model_card(e: Evidence) -> Outcome:
    card = e.model_card or {}
    if not card:
        return "fail", "no model card was registered with the model"
    wanted = ("intended_use", "limitations")
    missing = [k for k in wanted if not card.get(k)]
    if missing:
        return "warn", f"the model card lacks {', '.join(missing)}"
    return "pass", f"model card with {', '.join(sorted(card))}"


def _evaluation(e: Evidence) -> Outcome:
    for source in (e.model_card or {}, e.metadata or {}):
        metrics = source.get("metrics") or source.get("evaluation")
        if metrics:
            return "pass", f"evaluation metrics declared: {str(metrics)[:120]}"
    return "fail", "no evaluation metrics in the model card or metadata"


def _risk_class(e: Evidence) -> Outcome:
    for source in (e.model_card or {}, e.metadata or {}):
        value = source.get("risk_class")
        if value is None:
            continue
        if value not in _RISK_CLASSES:
            return "fail", f"risk class {value!r} is not one of {', '.join(_RISK_CLASSES)}"
        if value == "unacceptable":
            return "fail", "declared risk class 'unacceptable': a prohibited practice"
        return "pass", f"declared risk class {value!r}"
    return "fail", "no risk class declared (model_card.risk_class)"


def _kill_switch(e: Evidence) -> Outcome:
    if not e.kill_switch:
        return "fail", "no kill switch"
    state = " (the model is stopped by it now)" if e.blocked else ""
    return (
        "pass",
        "a scoped ('security'), audited kill switch takes the model out of service" + state,
    )


def _versions(e: Evidence) -> Outcome:
    old = []
    for package, minimum, why in _FIXED_VERSIONS:
        have = e.versions.get(package)
        if have is not None and _older(have, minimum):
            old.append(f"{package} {have} < {minimum} ({why})")
    if old:
        return "fail", "; ".join(old)
    shown = ", ".join(f"{p} {v}" for p, v in e.versions.items() if v)
    return "pass", f"at or above the known fixes: {shown}"


_ALL: tuple[tuple[Check, Callable[[Evidence], Outcome]], ...] = (
    (
        Check(
            "artifact_format",
            "The artifact is ONNX (no code runs at load)",
            3,
            True,
            _c(iso=("A.8.7", "A.8.19"), csf=("PR.PS-05",), act=("Art. 15(5)",)),
        ),
        _artifact_format,
    ),
    (
        Check(
            "unsafe_pickle",
            "No pickle stream that could run code",
            3,
            True,
            _c(
                iso=("A.8.7",),
                csf=("PR.PS-05", "ID.RA-01"),
                rmf=("MEASURE 2.7",),
                act=("Art. 15(5)",),
            ),
        ),
        _unsafe_pickle,
    ),
    (
        Check(
            "keras_tf",
            "No Keras Lambda layer or TensorFlow op that runs code or writes files",
            3,
            True,
            _c(iso=("A.8.7",), csf=("PR.PS-05",), act=("Art. 15(5)",)),
        ),
        _keras_tf,
    ),
    (
        Check(
            "hash_pinned",
            "The artifact's SHA-256 was pinned at register",
            2,
            False,
            _c(iso=("A.8.19", "A.5.21"), csf=("PR.DS-01", "ID.RA-09"), rmf=("MANAGE 3.1",)),
        ),
        _hash_pinned,
    ),
    (
        Check(
            "hash_at_load",
            "The stored artifact matches its registered hash",
            3,
            True,
            _c(iso=("A.8.32",), csf=("PR.DS-01",), gdpr=("Art. 32(1)(b)",), act=("Art. 15(5)",)),
        ),
        _hash_at_load,
    ),
    (
        Check(
            "signature",
            "An Ed25519 signature was verified against a pinned key",
            2,
            False,
            _c(iso=("A.8.24", "A.5.21"), csf=("PR.DS-01", "ID.RA-09")),
        ),
        _signature,
    ),
    (
        Check(
            "runtime_integrity",
            "Loaded models are re-hashed while they serve",
            1,
            False,
            _c(iso=("A.8.16",), csf=("DE.CM-09",)),
        ),
        _runtime_integrity,
    ),
    (
        Check(
            "auth_every_route",
            "Every route needs a bearer token",
            3,
            True,
            _c(
                iso=("A.5.15", "A.8.5"),
                csf=("PR.AA-03",),
                gdpr=("Art. 32(1)(b)",),
                act=("Art. 15(5)",),
            ),
        ),
        _auth,
    ),
    (
        Check(
            "jwt_settings",
            "Tokens: one asymmetric algorithm, short-lived, issuer and audience checked",
            2,
            False,
            _c(iso=("A.8.5", "A.8.24"), csf=("PR.AA-04",)),
        ),
        _jwt,
    ),
    (
        Check(
            "secret_storage",
            "Client secrets are stored only as salted slow hashes",
            2,
            True,
            _c(iso=("A.5.17", "A.8.24"), csf=("PR.AA-01",), gdpr=("Art. 32(1)(b)",)),
        ),
        _secrets,
    ),
    (
        Check(
            "scopes",
            "Every authenticated route requires its scope",
            2,
            False,
            _c(iso=("A.5.15", "A.8.2"), csf=("PR.AA-05",)),
        ),
        _scopes,
    ),
    (
        Check(
            "rate_limits",
            "The token endpoint is rate limited",
            1,
            False,
            _c(iso=("A.8.5",), csf=("PR.AA-03",)),
        ),
        _rate_limits,
    ),
    (
        Check(
            "tls_or_loopback",
            "Served over TLS, or only on loopback",
            2,
            True,
            _c(iso=("A.8.20", "A.8.24"), csf=("PR.DS-02",), gdpr=("Art. 32(1)(a)",)),
        ),
        _transport,
    ),
    (
        Check(
            "input_limits",
            "Request size, rows and non-finite values are limited",
            1,
            False,
            _c(iso=("A.8.26",), csf=("PR.PS-01",), act=("Art. 15(4)",)),
        ),
        _input_limits,
    ),
    (
        Check(
            "audit_log",
            "An audit log records what happens to the model",
            2,
            False,
            _c(iso=("A.8.15",), csf=("PR.PS-04",), gdpr=("Art. 5(2)",), act=("Art. 12",)),
        ),
        _audit_on,
    ),
    (
        Check(
            "audit_chain",
            "The audit log's hash chain verifies",
            2,
            True,
            _c(iso=("A.8.15", "A.5.33"), csf=("PR.PS-04",), act=("Art. 12",)),
        ),
        _audit_chain,
    ),
    (
        Check(
            "retention",
            "A retention period is configured for the audit log",
            1,
            False,
            _c(iso=("A.8.10",), gdpr=("Art. 5(1)(e)",), act=("Art. 19(1)", "Art. 26(6)")),
        ),
        _retention,
    ),
    (
        Check(
            "no_payloads_in_logs",
            "Logs hold no payloads, credentials or personal data",
            2,
            False,
            _c(iso=("A.5.34", "A.8.15"), gdpr=("Art. 5(1)(c)", "Art. 25")),
        ),
        _no_payloads,
    ),
    (
        Check(
            "model_card",
            "A model card states intended use and limitations",
            1,
            False,
            _c(rmf=("MAP 1.1", "MAP 2.2"), act=("Art. 11", "Art. 13")),
        ),
        _model_card,
    ),
    (
        Check(
            "evaluation_metrics",
            "Evaluation metrics are declared",
            1,
            False,
            _c(rmf=("MEASURE 2.3",), act=("Art. 15(3)",)),
        ),
        _evaluation,
    ),
    (
        Check(
            "risk_class",
            "A risk class is declared",
            1,
            False,
            _c(rmf=("MAP 1.5",), act=("Art. 5", "Art. 6")),
        ),
        _risk_class,
    ),
    (
        Check(
            "kill_switch",
            "A scoped, audited kill switch can stop the model",
            1,
            False,
            _c(rmf=("MANAGE 2.4",), act=("Art. 14(4)(e)",), csf=("RS.MI-01",)),
        ),
        _kill_switch,
    ),
    (
        Check(
            "dependency_versions",
            "Request-path dependencies are at or above known fixes",
            2,
            False,
            _c(iso=("A.8.8",), csf=("ID.RA-01", "PR.PS-02")),
        ),
        _versions,
    ),
)

CHECKS: tuple[Check, ...] = tuple(check for check, _ in _ALL)
"""Every check, in report order."""


def _older(have: str, minimum: str) -> bool:
    def parts(v: str) -> tuple[int, ...]:
        nums = []
        for piece in v.split("."):
            digits = re.match(r"\d+", piece)
            if digits is None:
                break
            nums.append(int(digits.group()))
        return tuple(nums)

    return parts(have) < parts(minimum)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
