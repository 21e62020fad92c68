"""The model registry: metadata in SQLite, artifacts in a content-addressed store.

:class:`Database` is the engine's SQLite file (WAL, migrations; other layers keep their tables in
it too), :class:`Registry` registers, finds, verifies and deletes models, and :class:`ModelRecord`
is what it returns. Artifacts are fetched by URL through fsspec; see :meth:`Registry.register`.
:func:`build_manifest` lists a model's files with their SHA-256 (the manifest the registry pins
and a publisher signs with :func:`sign_manifest`).
"""

from __future__ import annotations

from phi_engine.registry._db import MIGRATIONS, Database
from phi_engine.registry._manifest import Manifest, ManifestEntry, build_manifest, sign_manifest
from phi_engine.registry._record import ModelRecord
from phi_engine.registry._registry import Registry
from phi_engine.registry._validate import FRAMEWORKS

__all__ = [
    "FRAMEWORKS",
    "MIGRATIONS",
    "Database",
    "Manifest",
    "ManifestEntry",
    "ModelRecord",
    "Registry",
    "build_manifest",
    "sign_manifest",
]
