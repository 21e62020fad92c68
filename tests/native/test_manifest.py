"""Per-file manifests: pinned at register, signed by publishers, and what the load refuses.

A model directory, its .tar.gz and its .zip have the same manifest, so one signature covers all
three; an extra, missing or changed file changes the digest; symbolic links are refused wherever
they appear (in a registered directory, or in place of a stored artifact).
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from phi_engine.engine import Engine
from phi_engine.errors import IntegrityError, InvalidRequestError, PhiEngineError
from phi_engine.registry import Manifest, build_manifest, sign_manifest
from phi_engine.serving._process import ProcessRunner
from phi_test_models.tiny import mlp


def model_dir(root: Path, *, seed: int = 0, extra: dict[str, bytes] | None = None) -> Path:
    """A model directory: model.onnx with its weights in weights.bin, a README and a subfolder."""
    root.mkdir(parents=True)
    source = mlp(root.parent / f"{root.name}-src.onnx", seed=seed)
    onnx.save_model(
        onnx.load(str(source)),
        str(root / "model.onnx"),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    source.unlink()
    (root / "README.md").write_text("a test model\n")
    (root / "config").mkdir()
    (root / "config" / "labels.json").write_text('["a", "b"]')
    for name, data in (extra or {}).items():
        (root / name).write_bytes(data)
    return root


def tar_of(folder: Path, path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for item in sorted(folder.rglob("*")):
            tar.add(item, arcname=item.relative_to(folder).as_posix(), recursive=False)
    return path


def zip_of(folder: Path, path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for item in sorted(folder.rglob("*")):
            if item.is_file():
                zf.write(item, item.relative_to(folder).as_posix())
    return path


def pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def state(engine: Engine) -> tuple[list[str], list[str]]:
    """The registered model ids and the stored artifacts: a refusal changes neither."""
    files = sorted(
        p.relative_to(engine.home).as_posix()
        for p in (engine.home / "artifacts").rglob("*")
        if p.is_file()
    )
    return [m.model_id for m in engine.models()], files


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    with Engine(tmp_path / "home", progress=False) as eng:
        yield eng


def test_manifest_is_the_same_for_a_directory_and_its_archives(tmp_path: Path) -> None:
    folder = model_dir(tmp_path / "pkg")
    found = build_manifest(folder)
    assert [f.path for f in found.files] == [
        "README.md",
        "config/labels.json",
        "model.onnx",
        "weights.bin",
    ]
    for entry in found.files:
        data = (folder / entry.path).read_bytes()
        assert (entry.size, entry.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert build_manifest(tar_of(folder, tmp_path / "m.tgz")) == found
    assert build_manifest(zip_of(folder, tmp_path / "m.zip")) == found
    assert found.digest == hashlib.sha256(found.canonical()).hexdigest()
    assert Manifest.from_dict(json.loads(found.canonical())) == found
    # One file: the digest is the file's own SHA-256, whatever its name.
    single = build_manifest(folder / "weights.bin")
    assert single.digest == hashlib.sha256((folder / "weights.bin").read_bytes()).hexdigest()
    # Any change of content, an extra file, a missing file or a rename changes the digest.
    (folder / "README.md").write_text("changed\n")
    changed = build_manifest(folder)
    assert changed.digest != found.digest
    (folder / "extra.txt").write_text("x")
    assert build_manifest(folder).digest not in (found.digest, changed.digest)
    (folder / "extra.txt").unlink()
    (folder / "README.md").rename(folder / "README.txt")
    assert build_manifest(folder).digest not in (found.digest, changed.digest)


def test_register_a_directory_pins_its_manifest_and_serves(engine: Engine, tmp_path: Path) -> None:
    folder = model_dir(tmp_path / "pkg")
    digest = build_manifest(folder).digest
    record = engine.register("dir", "onnx", "1", str(folder), sha256=digest.upper())
    assert engine.manifest(record.model_id) == build_manifest(folder)
    dep = engine.deploy(record.model_id)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    reference = engine.register("ref", "onnx", "1", str(mlp(tmp_path / "ref.onnx", seed=0)))
    ref_dep = engine.deploy(reference.model_id)
    got = next(iter(engine.infer(dep.deployment_id, {"x": x}).outputs.values()))
    want = next(iter(engine.infer(ref_dep.deployment_id, {"x": x}).outputs.values()))
    np.testing.assert_array_equal(got, want)
    # The archives of the same files pin to the same digest; file:// works like a path.
    for version, source in (
        ("2", str(tar_of(folder, tmp_path / "m.tgz"))),
        ("3", str(zip_of(folder, tmp_path / "m.zip"))),
        ("4", folder.as_uri()),
    ):
        again = engine.register("dir", "onnx", version, source, sha256=digest)
        assert engine.manifest(again.model_id).digest == digest
        assert again.sha256 == record.sha256  # the same self-contained model is stored


def test_a_pin_over_other_files_is_refused_naming_the_digest(
    engine: Engine, tmp_path: Path
) -> None:
    folder = model_dir(tmp_path / "pkg")
    pinned = build_manifest(folder).digest
    for change in (
        lambda: (folder / "extra.txt").write_text("x"),  # an extra file
        lambda: (folder / "extra.txt").unlink() or (folder / "README.md").unlink(),  # missing
        lambda: (folder / "README.md").write_text("another readme\n"),  # changed
    ):
        change()
        before = state(engine)
        with pytest.raises(IntegrityError) as info:
            engine.register("dir", "onnx", "1", str(folder), sha256=pinned)
        assert info.value.field == "sha256"
        assert build_manifest(folder).digest in info.value.message
        assert state(engine) == before


def test_one_signature_covers_the_directory_and_its_archives(
    engine: Engine, tmp_path: Path
) -> None:
    folder = model_dir(tmp_path / "pkg")
    publisher, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    engine.trust_key("acme", pem(publisher))
    signature = sign_manifest(private_pem(publisher), build_manifest(folder))
    sources = [
        str(folder),
        str(tar_of(folder, tmp_path / "m.tgz")),
        str(zip_of(folder, tmp_path / "m.zip")),
    ]
    for version, source in enumerate(sources, start=1):
        record = engine.register(
            "signed", "onnx", str(version), source, signature=signature, signer="acme"
        )
        engine.deploy(record.model_id)  # verified again at load
    forged = sign_manifest(private_pem(stranger), build_manifest(folder))
    (folder / "extra.txt").write_text("slipped in after signing")
    for kwargs in (
        {"signature": signature, "signer": "acme"},  # an extra file: the digest differs
        {"signature": forged, "signer": "acme"},
    ):
        before = state(engine)
        with pytest.raises(IntegrityError) as info:
            engine.register("signed", "onnx", "9", str(folder), **kwargs)
        assert info.value.field == "signature"
        assert state(engine) == before


def test_symbolic_links_in_a_model_directory_are_refused(engine: Engine, tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"not the model's")
    folder = model_dir(tmp_path / "pkg")
    (folder / "weights-link.bin").symlink_to(secret)  # escapes the folder
    inside = model_dir(tmp_path / "pkg2")
    (inside / "readme-again").symlink_to(inside / "README.md")  # stays inside, still refused
    fifo = model_dir(tmp_path / "pkg3")
    os.mkfifo(fifo / "pipe")
    for source, word in ((folder, "symbolic link"), (inside, "symbolic link"), (fifo, "FIFO")):
        before = state(engine)
        with pytest.raises(InvalidRequestError) as info:
            engine.register("links", "onnx", "1", str(source))
        assert info.value.field == "storage_url"
        assert word in info.value.message
        assert state(engine) == before
        with pytest.raises(InvalidRequestError):
            build_manifest(source)


def test_a_stored_artifact_replaced_by_a_link_is_refused_at_load(
    engine: Engine, tmp_path: Path
) -> None:
    record = engine.register("m", "onnx", "1", str(mlp(tmp_path / "m.onnx", seed=1)))
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(record.artifact_path.read_bytes())  # the very same bytes, elsewhere
    record.artifact_path.unlink()
    record.artifact_path.symlink_to(copy)
    with pytest.raises(IntegrityError, match="symbolic link"):
        engine.deploy(record.model_id)
    assert engine.check_integrity() == {}  # nothing deployed, nothing checked
    events = [e.event for e in engine.logs()]
    assert "integrity_failed" in events


def test_process_workers_compile_only_the_bytes_they_verified(tmp_path: Path) -> None:
    path = mlp(tmp_path / "m.onnx", seed=2)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    x = np.ones((1, 4), np.float32)
    with ProcessRunner(path, sha256=digest) as run:
        assert run([{"x": x}])[0]
    with pytest.raises(IntegrityError, match="altered"):
        ProcessRunner(path, sha256="0" * 64)


def test_a_row_from_before_manifests_reads_as_its_one_file(engine: Engine, tmp_path: Path) -> None:
    record = engine.register("m", "onnx", "1", str(mlp(tmp_path / "m.onnx", seed=3)))
    engine._db.query("UPDATE models SET manifest = NULL WHERE model_id = ?", (record.model_id,))
    old = engine.manifest(record.model_id)
    assert old.digest == record.sha256 and old.size_bytes == record.size_bytes
    engine.deploy(record.model_id)


def test_sign_manifest_refuses_what_is_not_an_ed25519_key() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    for bad in (other, b"-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----\n", b"short"):
        with pytest.raises(PhiEngineError) as info:
            sign_manifest(bad, "0" * 64)
        assert info.value.field == "private_key"


# --- OpenSSF model signing bundles (the model_signing extra) ------------------------------------


def ec_keys(tmp_path: Path, curve: Any = None) -> tuple[Path, Path, str]:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(curve or ec.SECP256R1())
    private, public = tmp_path / "ec.pem", tmp_path / "ec.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public.write_bytes(pub)
    return private, public, pub.decode()


def model_signing_bundle(private: Path, model: Path, out: Path) -> str:
    ms = pytest.importorskip("model_signing", reason="the model_signing extra is not installed")
    ms.signing.Config().use_elliptic_key_signer(private_key=private).sign(model, out)
    return out.read_text()


def test_openssf_model_signing_bundles_verify_at_register_and_load(
    engine: Engine, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = model_dir(tmp_path / "pkg")
    private, _, public = ec_keys(tmp_path, ec.SECP384R1())
    engine.trust_key("openssf", public)
    bundle = model_signing_bundle(private, folder, tmp_path / "model.sig")
    # The same bundle covers the directory and its archives (model_signing signs files).
    for version, source in (("1", folder), ("2", tar_of(folder, tmp_path / "m.tgz"))):
        record = engine.register(
            "ms", "onnx", version, str(source), signature=bundle, signer="openssf"
        )
        engine.deploy(record.model_id)  # verified again at load
    # A single file, signed on its own.
    single = mlp(tmp_path / "single.onnx", seed=5)
    one = model_signing_bundle(private, single, tmp_path / "single.sig")
    engine.register("ms-one", "onnx", "1", str(single), signature=one, signer="openssf")

    ed = Ed25519PrivateKey.generate()
    engine.trust_key("ed", pem(ed))
    (tmp_path / "other").mkdir()
    other_private, _, other_public = ec_keys(tmp_path / "other")
    engine.trust_key("stranger", other_public)
    (folder / "README.md").write_text("changed after signing\n")
    cases = [
        ({"signature": bundle, "signer": "openssf"}, "changed: README.md"),
        ({"signature": bundle, "signer": "stranger"}, "another public key"),
        ({"signature": bundle, "signer": "ed"}, "EC public key"),
        ({"signature": '{"dsseEnvelope": 1}', "signer": "openssf"}, "not a Sigstore bundle"),
    ]
    for kwargs, words in cases:
        before = state(engine)
        with pytest.raises(IntegrityError) as info:
            engine.register("ms", "onnx", "9", str(folder), **kwargs)
        assert info.value.field == "signature" and words in info.value.message, info.value
        assert state(engine) == before
    # A file left out of the signature, and a signature by another key of the same shape.
    (folder / "README.md").write_text("a test model\n")
    (folder / "notes.txt").write_text("added after signing")
    with pytest.raises(IntegrityError, match=r"present but not signed: notes\.txt"):
        engine.register("ms", "onnx", "9", str(folder), signature=bundle, signer="openssf")
    (folder / "notes.txt").unlink()
    forged = model_signing_bundle(other_private, folder, tmp_path / "forged.sig")
    with pytest.raises(IntegrityError):
        engine.register("ms", "onnx", "9", str(folder), signature=forged, signer="openssf")


def test_a_model_signing_bundle_is_checked_again_at_every_load(
    engine: Engine, tmp_path: Path
) -> None:
    folder = model_dir(tmp_path / "pkg")
    private, _, public = ec_keys(tmp_path)
    engine.trust_key("openssf", public)
    bundle = model_signing_bundle(private, folder, tmp_path / "model.sig")
    record = engine.register("ms", "onnx", "1", str(folder), signature=bundle, signer="openssf")
    # The pinned manifest altered in the registry: the bundle no longer matches it.
    manifest = engine.manifest(record.model_id).to_dict()
    manifest["files"][0]["sha256"] = "0" * 64
    engine._db.query(
        "UPDATE models SET manifest = ? WHERE model_id = ?",
        (json.dumps(manifest), record.model_id),
    )
    with pytest.raises(IntegrityError, match="signature"):
        engine.deploy(record.model_id)
