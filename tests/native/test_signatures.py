"""Ed25519 signatures: verified at register against a pinned key, and again at every load."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from phi_engine.engine import Engine
from phi_engine.errors import ConflictError, IntegrityError, InvalidRequestError
from phi_engine.registry._signing import signed_message
from phi_test_models.tiny import mlp


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    return base64.b64encode(key.sign(signed_message(digest))).decode()


def pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def snapshot(engine: Engine) -> list[str]:
    return [m.model_id for m in engine.models()]


def test_signed_models_register_and_load_and_forgeries_are_refused(tmp_path: Path) -> None:
    path = mlp(tmp_path / "m.onnx", seed=0)
    data = path.read_bytes()
    publisher, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    with Engine(tmp_path / "home", progress=False) as engine:
        engine.trust_key("acme", pem(publisher))
        engine.trust_key("acme", pem(publisher))  # the same key again: a no-op
        with pytest.raises(ConflictError):
            engine.trust_key("acme", pem(stranger))
        raw = stranger.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        engine.trust_key("other", base64.b64encode(raw).decode())
        for bad_key in ("not a key", base64.b64encode(b"x" * 31).decode(), 42):
            with pytest.raises(InvalidRequestError) as info:
                engine.trust_key("bad", bad_key)  # type: ignore[arg-type]
            assert info.value.field == "public_key"

        before = snapshot(engine)
        refusals = [
            ({"signature": sign(stranger, data), "signer": "acme"}, IntegrityError, "signature"),
            (
                {"signature": sign(publisher, data + b"!"), "signer": "acme"},
                IntegrityError,
                "signature",
            ),
            ({"signature": "%%%", "signer": "acme"}, IntegrityError, "signature"),
            (
                {"signature": sign(publisher, data), "signer": "nobody"},
                InvalidRequestError,
                "signer",
            ),
            ({"signature": sign(publisher, data)}, InvalidRequestError, "signer"),
            ({"signer": "acme"}, InvalidRequestError, "signature"),
        ]
        for kwargs, error, field in refusals:
            with pytest.raises(error) as caught:
                engine.register("m", "onnx", "1", str(path), **kwargs)  # type: ignore[arg-type]
            assert caught.value.field == field, caught.value
            assert snapshot(engine) == before, "a refused registration stores nothing"

        signed = engine.register(
            "m", "onnx", "1", str(path), signature=sign(publisher, data), signer="acme"
        )
        dep = engine.deploy(signed.model_id)
        report = engine.validate(deployment_id=dep.deployment_id)
        assert report.check("signature").result == "pass"
        unsigned = engine.register("m", "onnx", "2", str(path))
        assert engine.validate(unsigned.model_id).check("signature").result == "fail"

        # The record altered after the fact (a different key swapped in): refused at load.
        with engine._db.transaction() as conn:
            conn.execute("UPDATE trusted_keys SET public_key = ? WHERE name = 'acme'", (raw.hex(),))
        assert engine.validate(signed.model_id).check("signature").result == "fail"
        with pytest.raises(IntegrityError):
            engine.deploy(signed.model_id)
