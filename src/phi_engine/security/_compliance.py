"""Compliance checks: concrete automated checks, each mapped to the controls it evidences.

No library can certify conformance to ISO/IEC 27001, the GDPR, the EU AI Act or the NIST
frameworks. What :func:`assess` does is run checks that code can run (what the artifact holds,
whether its hash is pinned and still matches, whether the API needs tokens and scopes, whether
the audit log's chain verifies, ...), say for each one what it found (``evidence``) and which
controls a passing result supports, and combine them into a weighted score:

- ``risk_score`` = Σ weight · badness / Σ weight, badness 1 for ``fail`` and ``not_run``, 0.5 for
  ``warn``, 0 for ``pass``;
- ``status`` is ``insecure`` when a critical check fails (or could not run), else ``secure`` when
  the score is at most :data:`SECURE_MAX_RISK`, else ``at_risk``;
- ``compliance`` lists only the standards all of whose mapped checks passed;
- ``not_assessed`` lists what no code can check, and ``disclaimer`` says this is not a
  certification.

The check table (:data:`CHECKS`, each check's controls and the function that runs it) is in
:mod:`phi_engine.security._checks`, and :class:`Evidence` and :class:`ServerSettings` in
:mod:`phi_engine.security._evidence`; both are re-exported here.
"""

from __future__ import annotations

import html
import importlib.metadata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from phi_engine.errors import InvalidRequestError
from phi_engine.security._checks import _ALL, _FIXED_VERSIONS, AI_RMF, CHECKS, CSF, ISO, STANDARDS
from phi_engine.security._checks import AI_ACT as AI_ACT
from phi_engine.security._checks import GDPR as GDPR
from phi_engine.security._checks import Check as Check
from phi_engine.security._checks import Outcome as Outcome
from phi_engine.security._checks import Result as Result
from phi_engine.security._evidence import Evidence, ServerSettings

__all__ = [
    "CHECKS",
    "DISCLAIMER",
    "STANDARDS",
    "Check",
    "CheckResult",
    "ComplianceReport",
    "Evidence",
    "ServerSettings",
    "assess",
]


#: The names the product sheet uses, and what they mean here.
ALIASES: dict[str, tuple[str, ...]] = {
    "ISO 27001": (ISO,),
    "ISO/IEC 27001": (ISO,),
    "NIST": (CSF, AI_RMF),
    "NIST CSF": (CSF,),
    "NIST AI RMF": (AI_RMF,),
}


def resolve_standards(names: Iterable[str]) -> tuple[str, ...]:
    """Standard names as given (ours, or the sheet's: ``ISO 27001``, ``NIST``...) -> ours.

    A single string is one name (not its characters).

    Raises:
        InvalidRequestError: a name neither we nor the sheet use, or ``names`` not a list.
    """
    if isinstance(names, str):
        names = (names,)
    elif not isinstance(names, Iterable) or isinstance(names, bytes | Mapping):
        raise InvalidRequestError(
            f"standards must be a list of standard names, got {names!r}", field="standards"
        )
    out: list[str] = []
    for name in names:
        found = None
        if isinstance(name, str):
            found = (name,) if name in STANDARDS else ALIASES.get(name)
        if found is None:
            known = ", ".join([*STANDARDS, *ALIASES])
            raise InvalidRequestError(
                f"unknown standard {name!r}; use any of {known}", field="standards"
            )
        out.extend(s for s in found if s not in out)
    return tuple(out)


#: The most risk a ``secure`` report may carry (no critical check failed either).
SECURE_MAX_RISK = 0.15

DISCLAIMER = (
    "These are automated technical checks mapped to controls of ISO/IEC 27001:2022 Annex A, NIST "
    "CSF 2.0, the NIST AI RMF, the GDPR and the EU AI Act. A passing check is evidence toward a "
    "control, not proof of it; this report is not a certification, audit or legal opinion, and "
    "'compliance' lists only standards whose automated checks all passed."
)

NOT_ASSESSED = (
    "organisational controls: policies, roles, training, supplier agreements (ISO/IEC 27001 "
    "A.5, A.6)",
    "physical security of the machines (ISO/IEC 27001 A.7)",
    "lawful basis, purpose limitation and data subject rights for the data the model processes "
    "(GDPR Art. 5(1)(a)-(b), 6, 12-22)",
    "the quality, representativeness and governance of training data (EU AI Act Art. 10)",
    "whether the declared risk class is the right one for the use (EU AI Act Art. 6, Annex III)",
    "human oversight procedures around the kill switch (EU AI Act Art. 14)",
    "bias, fairness and the societal impact of the model's outputs (NIST AI RMF MAP, MEASURE 2.11)",
)


@dataclass(frozen=True)
class CheckResult:
    """A check's outcome: ``pass``, ``warn``, ``fail`` or ``not_run``, and what was found."""

    id: str
    title: str
    result: Result
    evidence: str
    weight: float
    critical: bool
    controls: Mapping[str, tuple[str, ...]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "result": self.result,
            "evidence": self.evidence,
            "weight": self.weight,
            "critical": self.critical,
            "controls": {k: list(v) for k, v in self.controls.items()},
        }


@dataclass(frozen=True)
class ComplianceReport:
    """The outcome of :func:`assess` (API.md 2.2).

    Attributes:
        target: What was assessed (``model_id``, ``deployment_id``).
        status: ``secure``, ``at_risk`` or ``insecure``.
        risk_score: Weighted share of failed checks in [0, 1] (warn counts half, not_run fully).
        compliance: The standards all of whose mapped checks passed.
        checks: Every check's result.
        not_assessed: What no automated check can establish.
        disclaimer: That this is not a certification.
    """

    target: Mapping[str, str | None]
    status: str
    risk_score: float
    compliance: tuple[str, ...]
    checks: tuple[CheckResult, ...]
    not_assessed: tuple[str, ...] = NOT_ASSESSED
    disclaimer: str = DISCLAIMER

    def check(self, check_id: str) -> CheckResult:
        """One check's result by id."""
        for c in self.checks:
            if c.id == check_id:
                return c
        raise KeyError(check_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            **dict(self.target),
            "status": self.status,
            "risk_score": self.risk_score,
            "compliance": list(self.compliance),
            "checks": [c.to_dict() for c in self.checks],
            "not_assessed": list(self.not_assessed),
            "disclaimer": self.disclaimer,
        }

    def _repr_html_(self) -> str:
        colour = {"pass": "#1a7f37", "warn": "#9a6700", "fail": "#cf222e", "not_run": "#57606a"}
        rows = "".join(
            f"<tr><td>{html.escape(c.id)}</td>"
            f"<td style='color:{colour[c.result]};font-weight:bold'>{c.result}</td>"
            f"<td>{c.weight:g}{' (critical)' if c.critical else ''}</td>"
            f"<td>{html.escape(c.evidence)}</td>"
            f"<td>{html.escape(_controls_text(c.controls))}</td></tr>"
            for c in self.checks
        )
        target = ", ".join(f"{k} {v}" for k, v in self.target.items() if v)
        return (
            f"<div><b>Compliance checks</b> for {html.escape(target)}: "
            f"<b>{self.status}</b>, risk score {self.risk_score:.2f}; automated checks all "
            f"passed for: {html.escape(', '.join(self.compliance) or 'none')}"
            "<table><tr><th>check</th><th>result</th><th>weight</th><th>evidence</th>"
            f"<th>controls</th></tr>{rows}</table><small>{html.escape(self.disclaimer)}</small>"
            "</div>"
        )

    def __repr__(self) -> str:
        failed = [c.id for c in self.checks if c.result in ("fail", "not_run")]
        return (
            f"ComplianceReport(status={self.status!r}, risk_score={self.risk_score:.2f}, "
            f"compliance={list(self.compliance)}, failed={failed})"
        )


def assess(
    evidence: Evidence,
    standards: Iterable[str] | None = None,
) -> ComplianceReport:
    """Run every check on the evidence and score the result.

    Args:
        evidence: What the engine gathered.
        standards: Report compliance only for these (default: all of :data:`STANDARDS`).
    """
    wanted = tuple(STANDARDS if standards is None else standards)
    results = []
    for check, run in _ALL:
        outcome, text = run(evidence)
        results.append(
            CheckResult(
                check.id,
                check.title,
                outcome,
                text.strip(),
                check.weight,
                check.critical,
                check.controls,
            )
        )
    badness = {"pass": 0.0, "warn": 0.5, "fail": 1.0, "not_run": 1.0}
    total = sum(c.weight for c in results)
    risk = round(sum(c.weight * badness[c.result] for c in results) / total, 4)
    if any(c.critical and c.result in ("fail", "not_run") for c in results):
        status = "insecure"
    elif risk <= SECURE_MAX_RISK:
        status = "secure"
    else:
        status = "at_risk"
    compliance = tuple(
        std for std in wanted if all(c.result == "pass" for c in results if std in c.controls)
    )
    target = {"model_id": evidence.model_id, "deployment_id": evidence.deployment_id}
    return ComplianceReport(target, status, risk, compliance, tuple(results))


def _controls_text(controls: Mapping[str, tuple[str, ...]]) -> str:
    return "; ".join(f"{std}: {', '.join(ids)}" for std, ids in controls.items())


def installed_versions() -> dict[str, str | None]:
    """The installed versions of the packages :data:`_FIXED_VERSIONS` names."""
    out: dict[str, str | None] = {}
    for package, _, _ in _FIXED_VERSIONS:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out
