"""Ed25519 signatures over artifacts, verified against public keys pinned in the registry.

A publisher signs the message ``b"phi-engine artifact sha256 " + <manifest digest>`` with its
Ed25519 key (``_manifest``: for one file the digest is its SHA-256, for a directory or archive
the SHA-256 of the canonical per-file manifest; a signature over an archive's own SHA-256 is
accepted too). The engine pins the publisher's public key under a name
(:meth:`Registry.trust_key`), verifies the signature at register, stores it, and verifies it
again at every load. Signing a digest rather than the bytes keeps verification cheap for large
models; the digest itself is checked against the bytes.
"""

from __future__ import annotations

import base64
import binascii
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from phi_engine.errors import IntegrityError, InvalidRequestError

__all__ = ["MESSAGE_PREFIX", "check_key_name", "parse_public_key", "signed_message", "verify"]

MESSAGE_PREFIX = b"phi-engine artifact sha256 "
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def signed_message(sha256_hex: str) -> bytes:
    """What a publisher signs for an artifact with this SHA-256 (lower-case hex)."""
    return MESSAGE_PREFIX + sha256_hex.lower().encode()


def check_key_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequestError(
            "a key name is 1-64 letters, digits, '.', '_' or '-'", field="signer"
        )
    return name


def parse_public_key(text: object) -> bytes:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo) or the raw 32 bytes in base64 or
    hex; returns the raw bytes.

    Raises:
        InvalidRequestError: anything else (``field="public_key"``).
    """
    if isinstance(text, str):
        data = text.strip().encode()
        try:
            if data.startswith(b"-----BEGIN"):
                key = serialization.load_pem_public_key(data)
                if isinstance(key, Ed25519PublicKey):
                    return key.public_bytes(
                        serialization.Encoding.Raw, serialization.PublicFormat.Raw
                    )
            else:
                raw = (
                    bytes.fromhex(text)
                    if len(text) == 64
                    else base64.b64decode(data, validate=True)
                )
                if len(raw) == 32:
                    Ed25519PublicKey.from_public_bytes(raw)
                    return raw
        except (ValueError, binascii.Error, TypeError):
            pass
    raise InvalidRequestError(
        "public_key must be an Ed25519 public key: PEM, or its 32 raw bytes in base64 or hex",
        field="public_key",
    )


def verify(public_raw: bytes, signature: str, sha256_hex: str) -> None:
    """Check a base64 Ed25519 signature over :func:`signed_message`.

    Raises:
        IntegrityError: the signature is malformed or does not verify (``field="signature"``).
    """
    try:
        sig = base64.b64decode(signature.encode(), validate=True)
    except (binascii.Error, ValueError, AttributeError) as exc:
        raise IntegrityError("the signature is not base64", field="signature") from exc
    if len(sig) != 64:
        raise IntegrityError("an Ed25519 signature is 64 bytes", field="signature")
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(sig, signed_message(sha256_hex))
    except InvalidSignature as exc:
        raise IntegrityError(
            f"the signature does not verify for SHA-256 {sha256_hex} with the pinned key",
            field="signature",
        ) from exc
