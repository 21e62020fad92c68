""":class:`ModelRecord`: one registered model version, as the registry returns it."""

from __future__ import annotations

import html
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ModelRecord", "record_from_row"]


@dataclass(frozen=True)
class ModelRecord:
    """A registered model version.

    Attributes:
        model_id: ``"mdl_"`` and 16 hex characters.
        name: The model name.
        version: The version, unique per name.
        framework: ``onnx``, or the framework the ONNX model was exported from (lower case).
        sha256: The SHA-256 of the stored artifact (its name in the content-addressed store).
        size_bytes: The stored artifact's size.
        source_url: Where it was fetched from (user info and query string removed).
        artifact_path: The stored artifact, an absolute path.
        inputs: Input name -> ``{"dtype": "float32", "shape": ["batch", 4]}`` (symbolic
            dimensions are strings; ``shape`` is None when even the rank is unknown).
        outputs: The same for outputs.
        model_card: Intended use, limits, data, owner, risk class, when given.
        metadata: Free-form metadata, when given.
        created_at: Registration time, seconds since the epoch.
    """

    model_id: str
    name: str
    version: str
    framework: str
    sha256: str
    size_bytes: int
    source_url: str
    artifact_path: Path
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    model_card: dict[str, Any] | None
    metadata: dict[str, Any] | None
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-able values (``artifact_path`` as a string), for the REST adapter."""
        return {
            "model_id": self.model_id,
            "name": self.name,
            "version": self.version,
            "framework": self.framework,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "source_url": self.source_url,
            "artifact_path": str(self.artifact_path),
            "inputs": self.inputs,
            "outputs": self.outputs,
            "model_card": self.model_card,
            "metadata": self.metadata,
            "created_at": self.created_at,
        }

    def _repr_html_(self) -> str:
        """A small HTML table for notebooks; every value is escaped."""
        cells = []
        for key, value in self.to_dict().items():
            text = value if isinstance(value, str) else json.dumps(value)
            cells.append(f"<tr><th>{html.escape(key)}</th><td>{html.escape(text)}</td></tr>")
        return "<table>" + "".join(cells) + "</table>"


def _json_object(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    value: dict[str, Any] = json.loads(text)
    return value


def record_from_row(row: sqlite3.Row, home: Path) -> ModelRecord:
    """A record from a ``models`` row; ``home`` resolves the relative artifact path."""
    return ModelRecord(
        model_id=row["model_id"],
        name=row["name"],
        version=row["version"],
        framework=row["framework"],
        sha256=row["sha256"],
        size_bytes=int(row["size_bytes"]),
        source_url=row["source_url"],
        artifact_path=home / row["artifact"],
        inputs=json.loads(row["inputs"]),
        outputs=json.loads(row["outputs"]),
        model_card=_json_object(row["model_card"]),
        metadata=_json_object(row["metadata"]),
        created_at=float(row["created_at"]),
    )
