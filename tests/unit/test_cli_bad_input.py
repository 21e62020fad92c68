"""Bad arguments to ``phi-engine`` print one ``error: ...`` line naming the argument and exit
non-zero (2: bad input), never a Python traceback; the home is left as it was, and a valid
command still works afterwards. Each test names what used to happen instead."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("typer", reason="the CLI needs the server extra (typer)")

from typer.testing import CliRunner

from phi_engine.cli import app
from phi_test_models.tiny import mlp


def _invoke(*args: object) -> tuple[int, str]:
    """Run the CLI; fail the test on an uncaught exception (what a user sees as a traceback)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"traceback from {args}: {result.exception!r}") from result.exception
    return result.exit_code, result.output


def _refused(field: str, *args: object) -> None:
    code, output = _invoke(*args)
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2, output
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert f"({field})" in lines[0], output
    assert "Traceback" not in output


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return mlp(tmp_path / "m.onnx")


def test_home_that_is_a_file(tmp_path: Path, model: Path) -> None:
    """``--home`` naming a file used to end every command (``clients list`` too) in a
    FileExistsError traceback; now ``error: cannot use ... (home)`` and exit 2."""
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    _refused("home", "register", "m", "onnx", "1", model, "--home", afile)
    _refused("home", "clients", "list", "--home", afile)
    _refused("home", "logs", "--home", afile / "below")
    assert afile.read_text() == "keep me"
    code, output = _invoke("clients", "list", "--home", tmp_path / "good")
    assert code == 0, output


def test_paths_too_long(home: Path, model: Path) -> None:
    """A model path longer than the file system allows used to end ``register`` and
    ``manifest`` in an OSError (ENAMETOOLONG) traceback; now a one-line error, and no model
    is registered."""
    long = "/" + "a" * 5000 + ".onnx"
    _refused("storage_url", "register", "m", "onnx", "1", long, "--home", home)
    _refused("storage_url", "manifest", long)
    code, output = _invoke("register", "m", "onnx", "1", model, "--home", home, "--json")
    assert code == 0, output
    assert json.loads(output)["version"] == "1"


def test_infer_data_nested_too_deep(home: Path, model: Path) -> None:
    """``infer`` with JSON nested 100000 deep used to end in a RecursionError traceback; now
    ``error: data is nested too deeply (data)``."""
    code, output = _invoke("register", "m", "onnx", "1", model, "--home", home, "--json")
    assert code == 0, output
    code, output = _invoke("deploy", json.loads(output)["model_id"], "--home", home, "--json")
    assert code == 0, output
    dep = json.loads(output)["deployment_id"]
    _refused("data", "infer", dep, "[" * 100_000 + "]" * 100_000, "--home", home)
    code, output = _invoke("infer", dep, "[[0.1, 0.2, 0.3, 0.4]]", "--home", home)
    assert code == 0, output
    assert len(json.loads(output)["y"][0]) == 3


def test_logs_limit_too_large_for_sqlite(home: Path) -> None:
    """``logs --limit 99999999999999999999999`` used to end in an OverflowError traceback;
    now it prints every event, as a limit over their number does."""
    code, everything = _invoke("logs", "--home", home, "--json")
    assert code == 0, everything
    code, output = _invoke("logs", "--limit", "9" * 23, "--home", home, "--json")
    assert code == 0, output
    assert json.loads(output) == json.loads(everything)


def test_serve_bad_port_or_data_dir(home: Path, tmp_path: Path) -> None:
    """``serve --port -1`` used to start, fail inside uvicorn and exit 3 (the code for "not
    found"); ``--port 99999`` silently served on another port; ``--data-dir`` naming a file
    ended in a FileExistsError traceback. Now each is a one-line error, exit 2."""
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    _refused("port", "serve", "--port", "-1", "--home", home)
    _refused("port", "serve", "--port", "99999", "--home", home)
    _refused("data_dir", "serve", "--data-dir", afile, "--home", home)
    assert afile.read_text() == "keep me"


def test_demo_seconds_not_a_positive_number(tmp_path: Path) -> None:
    """``demo --seconds -1`` or ``nan`` used to run the whole demo with no load phase and exit
    0, and ``inf`` ran it forever; now ``error: seconds must be a positive number (seconds)``
    and nothing is created."""
    for seconds in ("-1", "0", "nan", "inf"):
        _refused(
            "seconds", "demo", "--seconds", seconds, "--model", "mlp", "--home", tmp_path / "d"
        )
    assert not (tmp_path / "d").exists()
