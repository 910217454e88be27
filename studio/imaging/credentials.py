"""C2PA content credentials: a signed manifest that says a creative is a composite with AI-generated media.

Signing needs the user's own certificate chain and private key (PEM files), named by the environment:

    STUDIO_C2PA_CERT   the signing certificate followed by its issuers (end-entity first), PEM
    STUDIO_C2PA_KEY    the private key of the first certificate, PEM (PKCS#8)
    STUDIO_C2PA_TRUST  optional, for verifying: the CA certificates (PEM) whose signers count as trusted

or by a `SigningConfig` passed in. The chain is checked when it is loaded (dates, each certificate issued by the next,
key matches) so a bad chain is one clear error before any creative is made. With no key configured the studio still
writes the recipe and the watermark, and says once per process that the creatives are unsigned.
"""

from __future__ import annotations

import datetime
import functools
import io
import itertools
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import c2pa
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from PIL import Image

from studio import __version__
from studio.core.errors import InputError

# IPTC digital source type of an image that combines a real photo with generated media.
COMPOSITE_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
ASSERTION = "com.creative-studio.creative"  # the studio's own assertion: recipe, models, watermark, product region
MIME_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
CERT_ENV, KEY_ENV, TRUST_ENV = "STUDIO_C2PA_CERT", "STUDIO_C2PA_KEY", "STUDIO_C2PA_TRUST"
UNSIGNED_NOTE = (f"studio: note: no C2PA signing key configured (set {CERT_ENV} and {KEY_ENV}); creatives carry the "
                 "watermark and the unsigned recipe, but no content credentials")
# Faster signing: no embedded thumbnail (the creative is its own preview) and no re-read of what was just written.
_SIGN_SETTINGS = {"builder": {"thumbnail": {"enabled": False}}, "verify": {"verify_after_sign": False}}

_noted = threading.Event()


class CredentialsError(InputError):
    """A signing configuration that cannot sign, or a creative whose credentials are missing, damaged or tampered."""


class NoCredentialsError(CredentialsError):
    """A file that carries no C2PA manifest (unsigned), or is not a format that can carry one."""


@dataclass(frozen=True)
class SigningConfig:
    """A certificate chain (PEM, end-entity first) and its private key (PEM); checked by `load_signing`."""

    chain: bytes
    key: bytes
    algorithm: str = "es256"  # es256/384/512 for EC keys, ps256/384/512 for RSA, ed25519


@dataclass(frozen=True)
class Verification:
    """The result of checking a creative's credentials: who signed, whether the signer is trusted, and the claims."""

    state: str  # "Trusted" (signer chains to a configured trust anchor) or "Valid" (signature and hashes good)
    signer: str
    issuer: str
    source_type: str | None
    claims: dict[str, Any]  # the studio's assertion: recipe hash, models, watermark, product region


def load_signing(config: SigningConfig | None = None) -> SigningConfig | None:
    """The checked signing configuration: `config`, or the one the environment names, or None (unsigned)."""
    if config is None:
        cert_path, key_path = os.environ.get(CERT_ENV), os.environ.get(KEY_ENV)
        if not cert_path and not key_path:
            return None
        if not cert_path or not key_path:
            raise CredentialsError(f"set both {CERT_ENV} and {KEY_ENV} (certificate chain and private key PEM files)")
        return _from_files(cert_path, key_path)
    return _checked(config)


@functools.lru_cache(maxsize=4)
def _from_files(cert_path: str, key_path: str) -> SigningConfig:
    """Read and check the environment's files once per process, not once per creative."""
    try:
        config = SigningConfig(Path(cert_path).read_bytes(), Path(key_path).read_bytes())
    except OSError as error:
        raise CredentialsError(f"cannot read the C2PA signing files ({error.strerror}: {error.filename})") from None
    return _checked(config)


@functools.lru_cache(maxsize=8)
def _checked(config: SigningConfig) -> SigningConfig:
    """Check a chain once: our own checks first (clear messages), then a probe signature, so a certificate c2pa
    refuses (e.g. no extended key usage) fails before any creative is made, not on the first one."""
    _check_chain(config)
    probe = io.BytesIO()
    Image.new("RGB", (1, 1)).save(probe, format="PNG")
    try:
        sign(probe.getvalue(), "PNG", {"claim_generator_info": [{"name": "creative-studio"}], "assertions": []},
             config)
    except CredentialsError as error:
        raise CredentialsError(f"the C2PA signing certificate is refused ({error}); C2PA needs an end-entity "
                               "certificate with an extended key usage such as emailProtection and key identifiers") \
            from None
    return config


def _check_chain(config: SigningConfig) -> None:
    """Refuse a chain c2pa would sign with but no verifier accepts: expired, not chaining, or not matching the key."""
    try:
        chain = x509.load_pem_x509_certificates(config.chain)
        key = serialization.load_pem_private_key(config.key, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:  # TypeError: an encrypted key
        raise CredentialsError(f"the C2PA certificate or key is not valid PEM, or the key is encrypted "
                               f"({_one_line(error)}); pass an unencrypted PKCS#8 key") from None
    now = datetime.datetime.now(datetime.timezone.utc)
    for cert in chain:
        subject = cert.subject.rfc4514_string()
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise CredentialsError(f"the C2PA certificate {subject!r} is valid only from "
                                   f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}; "
                                   "renew it")
    for cert, issuer in itertools.pairwise(chain):
        try:
            cert.verify_directly_issued_by(issuer)
        except (InvalidSignature, ValueError, TypeError) as error:
            raise CredentialsError(f"the C2PA certificate {cert.subject.rfc4514_string()!r} is not issued by the next "
                                   f"one in the chain ({type(error).__name__}); list the chain end-entity first") \
                from None
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if public != chain[0].public_key().public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo):
        raise CredentialsError("the C2PA private key does not belong to the first certificate of the chain")


def note_unsigned() -> None:
    """Say once per process, on stderr, that creatives are written without content credentials."""
    if not _noted.is_set():
        _noted.set()
        print(UNSIGNED_NOTE, file=sys.stderr)


def manifest(claims: dict[str, Any], *, generator: str, title: str) -> dict[str, Any]:
    """The manifest definition: created by a trained model around a real photo, plus the studio's claims."""
    return {
        "claim_generator_info": [{"name": "creative-studio", "version": __version__}],
        "title": title,
        "assertions": [
            {"label": "c2pa.actions.v2", "data": {"actions": [{
                "action": "c2pa.created",
                "digitalSourceType": COMPOSITE_SOURCE_TYPE,
                "softwareAgent": {"name": generator},
                "description": "background painted by a diffusion model around an unchanged product photo",
            }]}},
            {"label": ASSERTION, "data": claims},
        ],
    }


def sign(data: bytes, image_format: str, definition: dict[str, Any], config: SigningConfig) -> bytes:
    """`data` (an encoded PNG/JPEG/WebP) with a C2PA manifest embedded and signed."""
    mime = MIME_TYPES.get(image_format.upper())
    if mime is None:
        raise CredentialsError(f"cannot sign {image_format!r} files; use one of {', '.join(MIME_TYPES)}")
    info = c2pa.C2paSignerInfo(config.algorithm.encode(), config.chain, config.key, None)
    out = io.BytesIO()
    try:
        # One signer and builder per call: creatives are encoded on several threads at once.
        with c2pa.Context.from_dict(_SIGN_SETTINGS) as context, c2pa.Signer.from_info(info) as signer, \
                c2pa.Builder(definition, context) as builder:
            builder.sign(signer, mime, io.BytesIO(data), out)
    except c2pa.C2paError as error:
        raise CredentialsError(f"C2PA signing failed: {_one_line(error)}") from None
    return out.getvalue()


def verify(data: bytes, *, trust: bytes | None = None) -> Verification:
    """Check the credentials in `data`; CredentialsError (one line) when they are missing, damaged or tampered.

    `trust`: CA certificates (PEM); None reads STUDIO_C2PA_TRUST when set. A signer outside the trust list is not
    an error (users bring their own certificates), it is reported as state "Valid" rather than "Trusted".
    """
    mime = _sniff(data)
    if trust is None and os.environ.get(TRUST_ENV):
        try:
            trust = Path(os.environ[TRUST_ENV]).read_bytes()
        except OSError as error:
            raise CredentialsError(f"cannot read {TRUST_ENV} ({error.strerror}: {error.filename})") from None
    settings = {"verify": {"verify_trust": trust is not None}}
    if trust is not None:
        settings["trust"] = {"trust_anchors": trust.decode("ascii", "replace")}
    try:
        with c2pa.Context.from_dict(settings) as context, \
                c2pa.Reader(mime, io.BytesIO(data), context=context) as reader:
            active = reader.get_active_manifest()
            state = reader.get_validation_state()
            results = reader.get_validation_results() or {}
    except c2pa.C2paError as error:
        if "ManifestNotFound" in type(error).__name__ or "no JUMBF" in str(error):
            raise NoCredentialsError("no C2PA content credentials in this file") from None
        raise CredentialsError(f"the C2PA manifest is damaged: {_one_line(error)}") from None
    failures = [item.get("code", "?") for item in results.get("activeManifest", {}).get("failure", [])]
    # Without a trust list every signer is "untrusted"; that alone is not tampering.
    real = [code for code in failures if trust is not None or code != "signingCredential.untrusted"]
    if active is None or state == "Invalid" and real:
        raise CredentialsError(f"the C2PA credentials do not match this file ({', '.join(real) or 'no manifest'}): "
                               "it was changed after signing")
    if real:
        raise CredentialsError(f"the C2PA credentials are not valid ({', '.join(real)})")
    info = active.get("signature_info", {})
    source_type, claims = None, {}
    for assertion in active.get("assertions", []):
        if assertion.get("label", "").startswith("c2pa.actions"):
            source_type = next((a.get("digitalSourceType") for a in assertion["data"].get("actions", [])
                                if a.get("digitalSourceType")), source_type)
        if assertion.get("label") == ASSERTION:
            claims = assertion.get("data", {})
    return Verification(state or "Valid", str(info.get("common_name", "?")), str(info.get("issuer", "?")),
                        source_type, claims)


def _sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise NoCredentialsError("not a PNG, JPEG or WebP file; content credentials are read from those only")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__

