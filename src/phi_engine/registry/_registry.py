"""The model registry: register (fetch, unpack, check, compile, store), look up, delete, verify.

A registration is all or nothing. Everything slow or fallible (fetch, unpack, compile, writing
and fsync'ing the artifact) happens in a private staging directory under ``home/tmp`` before the
metadata transaction; inside it the artifact is renamed to its final name and then the row is
inserted, so a committed row always names a complete artifact. Any refusal removes what it
staged, leaving rows and files exactly as they were.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from phi_engine.errors import (
    ConflictError,
    IntegrityError,
    InvalidRequestError,
    NotFoundError,
    PhiEngineError,
)
from phi_engine.registry._archive import find_model, unpack
from phi_engine.registry._db import Database
from phi_engine.registry._fetch import fetch, redact
from phi_engine.registry._formats import (
    check_not_pickle_name,
    external_locations,
    inline_external_data,
    pickle_error,
    sniff,
)
from phi_engine.registry._manifest import (
    Manifest,
    ManifestEntry,
    copy_directory,
    manifest_of_files,
)
from phi_engine.registry._record import ModelRecord, record_from_row
from phi_engine.registry._signing import (
    check_key_name,
    is_bundle,
    model_signing_agrees,
    parse_public_key,
    verify_bundle,
)
from phi_engine.registry._signing import verify as verify_signature
from phi_engine.registry._store import ArtifactStore, Staged, read_verified
from phi_engine.registry._validate import check_args, check_sha256, to_json

__all__ = ["ModelRecord", "Registry"]


@contextmanager
def _blame_storage_url() -> Iterator[None]:
    """Keep the compiler's error class and message, but name register's argument as the field."""
    try:
        yield
    except PhiEngineError as exc:
        exc.field = "storage_url"
        raise


def _load(path: Path) -> Any:
    """The ModelProto in ``path`` (without external data), refused as the compiler refuses it."""
    from phi_engine.graph.onnx_import import load_model

    with _blame_storage_url():
        return load_model(path.read_bytes())


def _signature(model: Any) -> tuple[str, str]:
    """Compile the model (refusing one that cannot run) and describe its inputs and outputs."""
    from phi_engine.graph import compile

    with _blame_storage_url():
        compiled = compile(model)

    def describe(types: Mapping[str, Any]) -> str:
        return json.dumps(
            {
                name: {
                    "dtype": t.dtype.name,
                    "shape": None if t.shape is None else list(t.shape),
                }
                for name, t in types.items()
            }
        )

    return describe(compiled.inputs), describe(compiled.outputs)


def _local_directory(url: str) -> Path | None:
    """The directory a local path or ``file://`` URL names, if it names one."""
    if url.startswith("file://"):
        path = Path(unquote(urlsplit(url).path))
    elif "://" in url:
        return None
    else:
        path = Path(url).expanduser()
    try:
        return path if path.is_dir() and not path.is_symlink() else None
    except (OSError, ValueError):  # e.g. a name too long: the fetch refuses it clearly
        return None


@dataclass(frozen=True)
class _Prepared:
    """A registration's checked inputs: the model, the file to store, the per-file manifest of
    what was fetched, and the SHA-256 of the fetched archive's bytes (None unless an archive)."""

    model: Any
    artifact: Path
    manifest: Manifest
    archive_sha256: str | None
    files: Path  # the model as it arrived: its directory, or its one file

    def check_pin(self, pin: str | None, shown: str) -> None:
        """A pin is the manifest's digest (a plain file's SHA-256), or an archive's SHA-256."""
        if pin is None or pin in (self.manifest.digest, self.archive_sha256):
            return
        what = f"SHA-256 {self.manifest.digest}"
        if self.archive_sha256 is not None:
            what = f"SHA-256 {self.archive_sha256} (its files' manifest: {self.manifest.digest})"
        elif len(self.manifest.files) > 1:
            what = f"manifest digest {self.manifest.digest}"
        raise IntegrityError(
            f"[registry] {shown!r} has {what}, not the pinned {pin}", field="sha256"
        )

    def check_signature(self, key: bytes | None, signature: str | None) -> str | None:
        """Verify a signature over the manifest's digest (or, for an archive, over the
        archive's SHA-256); returns the digest it covers."""
        if key is None or signature is None:
            return None
        if is_bundle(signature):
            verify_bundle(key, signature, self.manifest)
            if model_signing_agrees(key, signature, self.files) is False:
                raise IntegrityError(
                    "the model_signing package does not verify the bundle over these files",
                    field="signature",
                )
            return self.manifest.digest
        if self.archive_sha256 is not None:
            try:
                verify_signature(key, signature, self.archive_sha256)
                return self.archive_sha256
            except IntegrityError:
                pass
        verify_signature(key, signature, self.manifest.digest)
        return self.manifest.digest


class Registry:
    """Models and versions in the metadata database, artifacts in the content-addressed store."""

    def __init__(self, home: Path, db: Database) -> None:
        """Use ``db`` for metadata and ``home/artifacts`` for artifacts.

        Finishes deletions a crash interrupted and removes stale temporary files.

        Args:
            home: The engine home directory (created if missing).
            db: The metadata database, already migrated.
        """
        self.home = Path(home).expanduser().resolve()
        self.db = db
        self.store = ArtifactStore(self.home)
        self._staging = self.home / "tmp"
        self._staging.mkdir(parents=True, exist_ok=True)
        with db.transaction() as conn:
            self.store.recover(
                lambda sha: (
                    conn.execute("SELECT 1 FROM models WHERE sha256 = ?", (sha,)).fetchone()
                    is not None
                )
            )
        self._sweep_staging()

    def register(
        self,
        model_name: str,
        framework: str,
        version: str,
        storage_url: str,
        *,
        sha256: str | None = None,
        model_card: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        progress: bool = False,
        max_bytes: int = 4 << 30,
        signature: str | None = None,
        signer: str | None = None,
    ) -> ModelRecord:
        """Fetch, check, compile and store a model version.

        Args:
            model_name: 1-128 characters of ``[A-Za-z0-9._-]``, not starting with ``.``.
            framework: ``onnx``, or ``pytorch``/``tensorflow``/``sklearn``/``jax`` for a model
                exported from them to ONNX (any case).
            version: 1-64 characters, the same set as ``model_name``.
            storage_url: A local path, ``file://``, ``http(s)://``, ``s3://`` (endpoint from
                ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``), or another fsspec scheme whose
                package is installed. An ``.onnx`` file, a tar/zip archive holding exactly
                one (plus its external data and any other files), or (local paths only) a
                directory holding the same, with no symbolic links.
            sha256: Pin (hex, any case): the digest of the per-file manifest of what arrived
                (:func:`build_manifest`; for a single file, its SHA-256), or, for an archive,
                the archive's own SHA-256.
            model_card: Intended use, limits, data, owner, risk class (JSON object).
            metadata: Free-form JSON object.
            progress: Show a download progress bar on stderr.
            max_bytes: The most bytes fetched, and unpacked from an archive.
            signature: Base64 Ed25519 signature by ``signer`` over the manifest's digest
                (:func:`sign_manifest`), or, for an archive, over its own SHA-256.
            signer: The name of a key pinned with :meth:`trust_key`.

        Returns:
            The new record. ``sha256`` in it is the digest of the stored artifact: the fetched
            file itself, or the self-contained model taken out of an archive or directory
            (external data folded in). :meth:`manifest` returns the pinned per-file manifest.

        Raises:
            InvalidRequestError: a bad argument, an unreachable or missing source, an unsafe
                archive, or a model that is not valid ONNX.
            UnsupportedError: a pickle-based artifact, a scheme whose package is missing, or a
                model using what phi_engine cannot run.
            IntegrityError: what arrived does not match ``sha256``, or the signature does not
                verify.
            ConflictError: ``model_name`` and ``version`` are already registered.
        """
        framework = check_args(model_name, framework, version, storage_url, max_bytes)
        pin = check_sha256(sha256)
        card_json = to_json(model_card, "model_card")
        metadata_json = to_json(metadata, "metadata")
        check_not_pickle_name(storage_url)
        if (signature is None) != (signer is None):
            raise InvalidRequestError(
                "give both signature and signer (a key pinned with trust_key), or neither",
                field="signature" if signature is None else "signer",
            )
        signer_key = None if signer is None else self.trusted_key(signer)
        self._check_unique(model_name, version)
        self._staging.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="register-", dir=self._staging))
        try:
            prepared = self._prepare(storage_url, workdir, max_bytes, progress)
            prepared.check_pin(pin, redact(storage_url))
            signed = prepared.check_signature(signer_key, signature)
            inputs, outputs = _signature(prepared.model)
            staged = self.store.stage_file(prepared.artifact)
            row: dict[str, Any] = {
                "model_id": "mdl_" + secrets.token_hex(8),
                "name": model_name,
                "version": version,
                "framework": framework,
                "sha256": staged.sha256,
                "size_bytes": staged.size_bytes,
                "artifact": self.store.relpath(staged.sha256),
                "source_url": redact(storage_url),
                "inputs": inputs,
                "outputs": outputs,
                "model_card": card_json,
                "metadata": metadata_json,
                "created_at": time.time(),
                "sha256_pinned": int(pin is not None),
                "signature": signature,
                "signer": signer,
                "signed_sha256": signed,
                "manifest": json.dumps(prepared.manifest.to_dict(), sort_keys=True),
            }
            self._commit(row, staged)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return self.get(row["model_id"])

    def _check_unique(self, name: str, version: str) -> None:
        rows = self.db.query(
            "SELECT model_id FROM models WHERE name = ? AND version = ?", (name, version)
        )
        if rows:
            raise ConflictError(
                f"[registry] model {name!r} version {version!r} is already registered as "
                f"{rows[0]['model_id']}",
                field="version",
            )

    def _prepare(self, url: str, workdir: Path, max_bytes: int, progress: bool) -> _Prepared:
        """Fetch (or copy a local model directory), scan, unpack and hash every file."""
        directory = _local_directory(url)
        if directory is not None:
            root = workdir / "unpacked"
            files = copy_directory(directory, root, max_bytes=max_bytes)
            _scan(root, redact(url))
            manifest = manifest_of_files(root, files)
            model, artifact = self._model_in(root, files, workdir)
            return _Prepared(model, artifact, manifest, None, root)
        fetched = fetch(url, workdir / "fetched", max_bytes=max_bytes, progress=progress)
        kind = sniff(fetched.path)
        if kind == "pickle":
            raise pickle_error(repr(redact(url)))
        _scan(fetched.path, redact(url))
        if kind == "onnx":
            model = _load(fetched.path)
            if locations := external_locations(model):
                raise InvalidRequestError(
                    f"[registry] the model refers to external data files ({', '.join(locations)});"
                    " register a directory, .tar.gz or .zip holding the model and those files",
                    field="storage_url",
                )
            name = PurePosixPath(urlsplit(url).path).name or "model.onnx"
            manifest = Manifest((ManifestEntry(name, fetched.size_bytes, fetched.sha256),))
            return _Prepared(model, fetched.path, manifest, None, fetched.path)
        root = workdir / "unpacked"
        root.mkdir()
        files = unpack(fetched.path, root, kind, max_bytes=max_bytes)
        manifest = manifest_of_files(root, files)
        model, artifact = self._model_in(root, files, workdir)
        return _Prepared(model, artifact, manifest, fetched.sha256, root)

    @staticmethod
    def _model_in(root: Path, files: list[Path], workdir: Path) -> tuple[Any, Path]:
        """The ModelProto among unpacked files and the self-contained file to store."""
        member = root / find_model(files)
        model = _load(member)
        if not external_locations(model):
            return model, member
        self_contained = workdir / "model.onnx"
        self_contained.write_bytes(inline_external_data(model, member.parent))
        return model, self_contained

    def _commit(self, row: dict[str, Any], staged: Staged) -> None:
        """Publish the artifact, then insert the row, in one write transaction."""
        try:
            with self.db.transaction() as conn:
                # Checked again under the write lock: another registration may have won.
                self._check_unique(row["name"], row["version"])
                created = self.store.publish(staged)
                try:
                    columns = ", ".join(row)
                    marks = ", ".join("?" for _ in row)
                    conn.execute(
                        f"INSERT INTO models ({columns}) VALUES ({marks})", list(row.values())
                    )
                except BaseException:
                    # Removed while the write lock still keeps others from reusing it.
                    if created:
                        self.store.unpublish(staged.sha256)
                    raise
        except sqlite3.IntegrityError as exc:
            raise ConflictError(
                f"[registry] model {row['name']!r} version {row['version']!r} is already "
                "registered",
                field="version",
            ) from exc
        finally:
            self.store.discard(staged)

    def _where(self, sql: str, key: object) -> list[sqlite3.Row]:
        """The rows ``sql`` selects for one key; none for a key that is not a string (an id or
        name given as a list names nothing, rather than failing in SQLite's binding)."""
        return self.db.query(sql, (key,)) if isinstance(key, str) else []

    def get(self, model_id: str) -> ModelRecord:
        """The model with this id.

        Raises:
            NotFoundError: no such model (``field="model_id"``).
        """
        rows = self._where("SELECT * FROM models WHERE model_id = ?", model_id)
        if not rows:
            raise NotFoundError(f"[registry] no model {model_id!r}", field="model_id")
        return record_from_row(rows[0], self.home)

    def find(self, name: str, version: str) -> ModelRecord:
        """The model registered under ``name`` and ``version``.

        Raises:
            NotFoundError: no such model (``field="version"``, or ``"model_name"`` when no
                version of it exists).
        """
        if not isinstance(name, str) or not isinstance(version, str):
            field = "model_name" if not isinstance(name, str) else "version"
            raise NotFoundError(f"[registry] no model {name!r} version {version!r}", field=field)
        rows = self.db.query("SELECT * FROM models WHERE name = ? AND version = ?", (name, version))
        if rows:
            return record_from_row(rows[0], self.home)
        known = self.db.query("SELECT 1 FROM models WHERE name = ? LIMIT 1", (name,))
        field = "version" if known else "model_name"
        raise NotFoundError(f"[registry] no model {name!r} version {version!r}", field=field)

    def list(self, name: str | None = None) -> list[ModelRecord]:
        """Every model (or every version of ``name``), oldest first.

        Raises:
            InvalidRequestError: ``name`` is not a string (``field="name"``).
        """
        if name is not None and not isinstance(name, str):
            raise InvalidRequestError(
                f"[registry] name must be a model name string, got {name!r}", field="name"
            )
        if name is None:
            rows = self.db.query("SELECT * FROM models ORDER BY created_at, rowid")
        else:
            rows = self.db.query(
                "SELECT * FROM models WHERE name = ? ORDER BY created_at, rowid", (name,)
            )
        return [record_from_row(row, self.home) for row in rows]

    def delete(self, model_id: str) -> None:
        """Delete a model, and its artifact when no other model has the same bytes.

        Deployment rows that are ``stopped`` and refer to the model are history of a model that
        no longer exists: the foreign keys require removing them (or clearing the candidate).

        Raises:
            NotFoundError: no such model.
            ConflictError: a deployment that is not stopped uses it (the message names them).
        """
        if not isinstance(model_id, str):
            raise NotFoundError(f"[registry] no model {model_id!r}", field="model_id")
        trashed: Path | None = None
        try:
            with self.db.transaction() as conn:
                row = conn.execute(
                    "SELECT sha256 FROM models WHERE model_id = ?", (model_id,)
                ).fetchone()
                if row is None:
                    raise NotFoundError(f"[registry] no model {model_id!r}", field="model_id")
                self._release_deployments(conn, model_id)
                conn.execute("DELETE FROM models WHERE model_id = ?", (model_id,))
                shared = conn.execute(
                    "SELECT 1 FROM models WHERE sha256 = ? LIMIT 1", (row["sha256"],)
                ).fetchone()
                if shared is None:
                    trashed = self.store.trash(row["sha256"])
        except BaseException as exc:
            if trashed is not None:
                self.store.restore(trashed)
            if isinstance(exc, sqlite3.IntegrityError):
                # Another layer's table still refers to the model or its stopped deployments.
                raise ConflictError(
                    f"[registry] model {model_id} is still referenced: {exc}", field="model_id"
                ) from exc
            raise
        if trashed is not None:
            self.store.purge(trashed)

    @staticmethod
    def _release_deployments(conn: sqlite3.Connection, model_id: str) -> None:
        live = conn.execute(
            "SELECT deployment_id, status FROM deployments "
            "WHERE status NOT IN ('stopped', 'killed') "
            "AND (model_id = ? OR candidate_model_id = ?) ORDER BY deployment_id",
            (model_id, model_id),
        ).fetchall()
        if live:
            names = ", ".join(f"{r['deployment_id']} ({r['status']})" for r in live)
            raise ConflictError(
                f"[registry] model {model_id} is used by deployments {names}; stop them first",
                field="model_id",
            )
        conn.execute(
            "UPDATE deployments SET candidate_model_id = NULL WHERE candidate_model_id = ?",
            (model_id,),
        )
        conn.execute("DELETE FROM deployments WHERE model_id = ?", (model_id,))

    def _row(self, model_id: str, columns: str) -> sqlite3.Row:
        """Some columns of a model's row.

        Raises:
            NotFoundError: no such model (``field="model_id"``).
        """
        rows = self._where(f"SELECT {columns} FROM models WHERE model_id = ?", model_id)
        if not rows:
            raise NotFoundError(f"[registry] no model {model_id!r}", field="model_id")
        row: sqlite3.Row = rows[0]
        return row

    def sha256_pinned(self, model_id: str) -> bool:
        """Whether the model was registered with a SHA-256 pin.

        Raises:
            NotFoundError: no such model.
        """
        return bool(self._row(model_id, "sha256_pinned")["sha256_pinned"])

    # ---- signatures ---------------------------------------------------------------------------

    def trust_key(self, name: str, public_key: str) -> None:
        """Pin a publisher's public key under ``name``: Ed25519 (PEM, or raw base64/hex), or
        an EC P-256/P-384/P-521 key in PEM for OpenSSF model signing bundles.

        Raises:
            InvalidRequestError: a bad name or key.
            ConflictError: the name is taken by another key.
        """
        check_key_name(name)
        raw = parse_public_key(public_key)
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT public_key FROM trusted_keys WHERE name = ?", (name,)
            ).fetchone()
            if row is not None:
                if row["public_key"] != raw.hex():
                    raise ConflictError(
                        f"[registry] key {name!r} is pinned to another key", field="signer"
                    )
                return
            conn.execute(
                "INSERT INTO trusted_keys (name, public_key, added_at) VALUES (?, ?, ?)",
                (name, raw.hex(), time.time()),
            )

    def trusted_key(self, name: str) -> bytes:
        """The raw public key pinned under ``name``.

        Raises:
            InvalidRequestError: no key is pinned under that name (``field="signer"``).
        """
        rows = self._where("SELECT public_key FROM trusted_keys WHERE name = ?", name)
        if not rows:
            raise InvalidRequestError(
                f"[registry] no trusted key named {name!r}; pin it with trust_key first",
                field="signer",
            )
        return bytes.fromhex(rows[0]["public_key"])

    def signature_state(self, model_id: str) -> str:
        """``verified`` (signed, and the signature verifies now with the pinned key), ``none``
        (unsigned) or ``invalid``."""
        row = self._row(model_id, "signature, signer, signed_sha256")
        if row["signature"] is None:
            return "none"
        try:
            key = self.trusted_key(row["signer"])
            if is_bundle(row["signature"]):
                verify_bundle(key, row["signature"], self.manifest(model_id))
            else:
                verify_signature(key, row["signature"], row["signed_sha256"])
        except (IntegrityError, InvalidRequestError):
            return "invalid"
        return "verified"

    def manifest(self, model_id: str) -> Manifest:
        """The per-file manifest pinned at register (for a model registered before manifests
        existed: its one stored file).

        Raises:
            NotFoundError: no such model.
        """
        row = self._row(model_id, "manifest, sha256, size_bytes")
        if row["manifest"] is None:
            return Manifest((ManifestEntry("model.onnx", int(row["size_bytes"]), row["sha256"]),))
        return Manifest.from_dict(json.loads(row["manifest"]))

    def verified_bytes(self, model_id: str) -> bytes:
        """The stored artifact's bytes, read once and hashed against the registered digest;
        the signature, if any, verified again with its signer's pinned key.

        Raises:
            NotFoundError: no such model.
            IntegrityError: the artifact is missing, a link, or its bytes changed; or the
                signature no longer verifies.
        """
        record = self.get(model_id)
        data = read_verified(record.artifact_path, record.sha256, f"the artifact of {model_id}")
        if self.signature_state(model_id) == "invalid":
            raise IntegrityError(
                f"[registry] the signature of {model_id} no longer verifies with its signer's "
                "pinned key (key removed or replaced, or the record altered)",
                field="model_id",
            )
        return data

    def _sweep_staging(self) -> None:
        """Remove staging directories left by a crashed registration (older than a day)."""
        cutoff = time.time() - 24 * 3600
        for entry in self._staging.iterdir():
            try:
                if entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)
            except FileNotFoundError:
                continue


def _scan(path: Path, shown: str) -> None:
    """Refuse what the artifact scanner finds critical or high risk in the fetched bytes (every
    member of an archive, by content, nested archives included), before anything is stored.

    Raises:
        UnsupportedError: a pickle stream anywhere in it (pickles are never loaded).
        InvalidRequestError: any other critical or high finding (e.g. external data escaping
            the model folder, an archive bomb, a Keras Lambda layer).
    """
    from phi_engine.security import scan_path  # the security package imports the registry's db

    report = scan_path(path)
    if report.ok:
        return
    worst = report.findings[0]
    where = worst.path.replace(path.name, repr(shown), 1)
    if worst.rule.startswith("pickle."):
        raise pickle_error(f"{where} ({worst.message})")
    raise InvalidRequestError(
        f"[registry] unsafe artifact: {where}: {worst.message} [{worst.rule}]", field="storage_url"
    )
