"""The compliance check table: every control id a check names exists in its standard's numbering.

This checks the syntax and the ranges of the ids (ISO/IEC 27001:2022 Annex A, NIST CSF 2.0, the
NIST AI RMF 1.0, the GDPR and the EU AI Act), not whether a control fits its check: that takes a
reviewer who reads the control's text.
"""

from __future__ import annotations

import re

import pytest

from phi_engine.security import CHECKS, STANDARDS
from phi_engine.security._checks import AI_ACT, AI_RMF, CSF, GDPR, ISO, Check

# ISO/IEC 27001:2022 Annex A: 37 organisational, 8 people, 14 physical, 34 technological.
ISO_CONTROLS = {5: 37, 6: 8, 7: 14, 8: 34}

# NIST CSF 2.0: function -> its categories (CSF 1.1 ones such as PR.AC, PR.IP, DE.DP are gone).
CSF_CATEGORIES = {
    "GV": {"OC", "RM", "RR", "PO", "OV", "SC"},
    "ID": {"AM", "RA", "IM"},
    "PR": {"AA", "AT", "DS", "PS", "IR"},
    "DE": {"CM", "AE"},
    "RS": {"MA", "AN", "CO", "MI"},
    "RC": {"RP", "CO"},
}

# NIST AI RMF 1.0: function -> category -> number of subcategories.
AI_RMF_SUBCATEGORIES = {
    "GOVERN": {1: 7, 2: 3, 3: 2, 4: 3, 5: 2, 6: 2},
    "MAP": {1: 6, 2: 3, 3: 5, 4: 2, 5: 2},
    "MEASURE": {1: 3, 2: 13, 3: 3, 4: 3},
    "MANAGE": {1: 4, 2: 4, 3: 2, 4: 3},
}

ISO_ID = re.compile(r"A\.([5-8])\.(\d+)")
CSF_ID = re.compile(r"(GV|ID|PR|DE|RS|RC)\.([A-Z]{2})-(\d{2})")
AI_RMF_ID = re.compile(r"(GOVERN|MAP|MEASURE|MANAGE) (\d)\.(\d+)")
GDPR_ID = re.compile(r"Art\. (\d+)(\(\d+\))?(\([a-z]\))?")
# A point letter is allowed: Art. 14(4)(e) is the AI Act's 'stop' button.
AI_ACT_ID = re.compile(r"Art\. (\d+)(\(\d+\))?(\([a-z]\))?")


def _valid_iso(control: str) -> bool:
    m = ISO_ID.fullmatch(control)
    return m is not None and 1 <= int(m[2]) <= ISO_CONTROLS[int(m[1])]


def _valid_csf(control: str) -> bool:
    m = CSF_ID.fullmatch(control)
    return m is not None and m[2] in CSF_CATEGORIES[m[1]] and int(m[3]) >= 1


def _valid_ai_rmf(control: str) -> bool:
    m = AI_RMF_ID.fullmatch(control)
    if m is None:
        return False
    count = AI_RMF_SUBCATEGORIES[m[1]].get(int(m[2]))
    return count is not None and 1 <= int(m[3]) <= count


def _valid_gdpr(control: str) -> bool:
    m = GDPR_ID.fullmatch(control)
    return m is not None and 1 <= int(m[1]) <= 99


def _valid_ai_act(control: str) -> bool:
    m = AI_ACT_ID.fullmatch(control)
    return m is not None and 1 <= int(m[1]) <= 113


VALID = {
    ISO: _valid_iso,
    CSF: _valid_csf,
    AI_RMF: _valid_ai_rmf,
    GDPR: _valid_gdpr,
    AI_ACT: _valid_ai_act,
}


def test_the_validators_cover_every_standard() -> None:
    assert set(VALID) == set(STANDARDS)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.id)
def test_every_control_id_exists_in_its_standard(check: Check) -> None:
    assert check.controls, "a check must support at least one control"
    for standard, ids in check.controls.items():
        assert standard in STANDARDS, standard
        assert isinstance(ids, tuple) and ids, f"{standard}: no control ids"
        assert len(set(ids)) == len(ids), f"{standard}: duplicate ids {ids}"
        bad = [i for i in ids if not VALID[standard](i)]
        assert not bad, f"{standard}: not a control id: {bad}"


def test_every_standard_is_supported_by_some_check() -> None:
    for standard in STANDARDS:
        assert any(standard in c.controls for c in CHECKS), standard


def test_the_table_keeps_its_checks() -> None:
    ids = [c.id for c in CHECKS]
    assert len(ids) == len(set(ids)) == 23
    assert all(c.weight > 0 and c.title for c in CHECKS)


@pytest.mark.parametrize(
    ("standard", "control"),
    [
        (ISO, "A.5.38"),
        (ISO, "A.8.35"),
        (ISO, "A.9.1"),
        (ISO, "A.12.4.1"),  # ISO/IEC 27001:2013 numbering
        (CSF, "PR.AC-1"),  # CSF 1.1
        (CSF, "PR.DS-6"),
        (CSF, "PR.IP-01"),
        (CSF, "DE.MI-01"),
        (AI_RMF, "MEASURE 2.14"),
        (AI_RMF, "MANAGE 4.4"),
        (AI_RMF, "MAP 6.1"),
        (AI_RMF, "Govern 1.1"),
        (GDPR, "Article 32"),
        (GDPR, "Art. 5(1)(c)(i)"),
        (AI_ACT, "Art. 114"),
        (AI_ACT, "Art 12"),
    ],
)
def test_the_validators_refuse_ids_that_do_not_exist(standard: str, control: str) -> None:
    assert not VALID[standard](control)


@pytest.mark.parametrize(
    ("standard", "control"),
    [
        (ISO, "A.5.37"),
        (ISO, "A.6.8"),
        (ISO, "A.7.14"),
        (ISO, "A.8.34"),
        (CSF, "GV.SC-10"),
        (CSF, "RS.MI-01"),
        (AI_RMF, "MEASURE 2.13"),
        (AI_RMF, "GOVERN 6.2"),
        (GDPR, "Art. 32(1)(b)"),
        (AI_ACT, "Art. 14(4)(e)"),
        (AI_ACT, "Art. 26(6)"),
    ],
)
def test_the_validators_accept_ids_that_exist(standard: str, control: str) -> None:
    assert VALID[standard](control)
