"""Publishers' signatures over models, verified against public keys pinned in the registry.

The engine pins a publisher's public key under a name (:meth:`Registry.trust_key`), verifies a
registration's signature before anything is stored, keeps it, and verifies it again at every
load. Two formats are accepted:

- Ed25519: a publisher signs ``b"phi-engine artifact sha256 " + <manifest digest>`` with its
  Ed25519 key (``_manifest``: for one file the digest is its SHA-256, for a directory or
  archive the SHA-256 of the canonical per-file manifest; a signature over an archive's own
  SHA-256 is accepted too). Signing a digest rather than the bytes keeps verification cheap
  for large models; the digest itself is checked against the bytes.
- OpenSSF model signing (https://github.com/sigstore/model-transparency, ``model_signing``
  1.x, signed with an elliptic-curve key: ``model_signing sign key``): a Sigstore bundle whose
  DSSE envelope carries an in-toto statement listing every file with its SHA-256. The bundle's
  ECDSA signature is checked against the pinned EC public key (P-256, P-384 or P-521), and its
  file list must equal the registered manifest exactly (a single file: its digest). This check
  needs only ``cryptography``; with the ``model_signing`` extra installed, register also runs
  that package's own verifier over the files, which must agree.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from phi_engine.errors import IntegrityError, InvalidRequestError

if TYPE_CHECKING:
    from phi_engine.registry._manifest import Manifest

__all__ = [
    "MESSAGE_PREFIX",
    "check_key_name",
    "is_bundle",
    "model_signing_agrees",
    "parse_public_key",
    "signed_message",
    "verify",
    "verify_bundle",
]

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


_CURVES: dict[str, hashes.HashAlgorithm] = {
    "secp256r1": hashes.SHA256(),
    "secp384r1": hashes.SHA384(),
    "secp521r1": hashes.SHA512(),
}


def parse_public_key(text: object) -> bytes:
    """A publisher's public key: Ed25519 as PEM (SubjectPublicKeyInfo) or its raw 32 bytes in
    base64 or hex (returned raw), or an EC P-256/P-384/P-521 key as PEM (for OpenSSF model
    signing bundles; returned as normalised PEM).

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
                if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _CURVES:
                    return key.public_bytes(
                        serialization.Encoding.PEM,
                        serialization.PublicFormat.SubjectPublicKeyInfo,
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
        "public_key must be an Ed25519 public key (PEM, or its 32 raw bytes in base64 or hex) "
        "or an EC P-256/P-384/P-521 public key in PEM",
        field="public_key",
    )


def verify(public_raw: bytes, signature: str, sha256_hex: str) -> None:
    """Check a base64 Ed25519 signature over :func:`signed_message`.

    Raises:
        IntegrityError: the signature is malformed or does not verify, or the key is not an
            Ed25519 key (``field="signature"``).
    """
    if len(public_raw) != 32:
        raise IntegrityError(
            "the signer's pinned key is an EC key: it verifies OpenSSF model signing bundles, "
            "not base64 Ed25519 signatures",
            field="signature",
        )
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


_PREDICATE = "https://model_signing/signature/v1.0"
_PAYLOAD_TYPE = "application/vnd.in-toto+json"


def is_bundle(signature: str) -> bool:
    """Whether a ``signature`` is an OpenSSF model signing bundle (JSON) rather than base64."""
    return signature.lstrip().startswith("{")


def _bad(message: str) -> IntegrityError:
    return IntegrityError(f"the model signing bundle {message}", field="signature")


def _statement(public_pem: bytes, bundle_text: str) -> dict[str, Any]:
    """The in-toto statement of a bundle whose DSSE signature verifies with the key."""
    if not public_pem.startswith(b"-----BEGIN"):
        raise _bad("needs an EC public key; the signer's pinned key is Ed25519")
    key = serialization.load_pem_public_key(public_pem)
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVES:
        raise _bad("needs an EC P-256, P-384 or P-521 public key")
    try:
        bundle = json.loads(bundle_text)
        envelope = bundle["dsseEnvelope"]
        payload = base64.b64decode(envelope["payload"], validate=True)
        payload_type = str(envelope["payloadType"])
        signatures = [base64.b64decode(s["sig"], validate=True) for s in envelope["signatures"]]
        hint = ((bundle.get("verificationMaterial") or {}).get("publicKey") or {}).get("hint")
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise _bad(f"is not a Sigstore bundle with a DSSE envelope ({exc})") from exc
    if payload_type != _PAYLOAD_TYPE:
        raise _bad(f"carries {payload_type!r}, not an in-toto statement")
    if hint and hint != hashlib.sha256(public_pem).hexdigest():
        raise _bad("names another public key than the signer's pinned one")
    kind = payload_type.encode()
    pae = b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)
    algorithm = ec.ECDSA(_CURVES[key.curve.name])
    for sig in signatures:
        try:
            key.verify(sig, pae, algorithm)
            break
        except InvalidSignature:
            continue
    else:
        raise _bad("signature does not verify with the signer's pinned key")
    try:
        statement: dict[str, Any] = json.loads(payload)
    except ValueError as exc:
        raise _bad("payload is not JSON") from exc
    if statement.get("predicateType") != _PREDICATE:
        raise _bad(f"predicate is {statement.get('predicateType')!r}, not {_PREDICATE!r}")
    return statement


def verify_bundle(public_pem: bytes, bundle_text: str, manifest: Manifest) -> None:
    """Check an OpenSSF model signing bundle against the pinned EC key and the manifest.

    Raises:
        IntegrityError: the bundle is malformed, its signature does not verify, or the files it
            lists differ from the manifest (the message names the difference).
    """
    statement = _statement(public_pem, bundle_text)
    try:
        resources = statement["predicate"]["resources"]
        signed = {str(r["name"]): str(r["digest"]).lower() for r in resources}
        algorithms = {str(r.get("algorithm", "sha256")) for r in resources}
    except (KeyError, TypeError, AttributeError) as exc:
        raise _bad(f"predicate lists no resources ({exc})") from exc
    if algorithms != {"sha256"}:
        raise _bad(f"hashes files with {sorted(algorithms)}; phi_engine pins SHA-256")
    ours = {f.path: f.sha256 for f in manifest.files}
    if len(signed) == 1 and len(ours) == 1:  # one file: its name is not part of it
        if next(iter(signed.values())) != next(iter(ours.values())):
            raise _bad("signs another file than the one registered")
        return
    missing = sorted(set(signed) - set(ours))
    extra = sorted(set(ours) - set(signed))
    changed = sorted(p for p in set(signed) & set(ours) if signed[p] != ours[p])
    if missing or extra or changed:
        parts = [
            f"{label}: {', '.join(names[:5])}"
            for label, names in (
                ("signed but absent", missing),
                ("present but not signed", extra),
                ("changed", changed),
            )
            if names
        ]
        raise _bad("does not match the files: " + "; ".join(parts))


def model_signing_agrees(public_pem: bytes, bundle_text: str, model_path: Path) -> bool | None:
    """The ``model_signing`` package's own verdict on the files at ``model_path``; ``None``
    when that optional extra is not installed."""
    try:
        import model_signing  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    with tempfile.TemporaryDirectory(prefix="phi-model-signing-") as tmp:
        key_file, sig_file = Path(tmp) / "key.pub", Path(tmp) / "model.sig"
        key_file.write_bytes(public_pem)
        sig_file.write_text(bundle_text)
        try:
            verifying: Any = model_signing.verifying  # the package ships no complete types
            config = verifying.Config().use_elliptic_key_verifier(public_key=key_file)
            config.verify(model_path, sig_file)
        except Exception:  # the package raises ValueError and its own errors
            return False
    return True
