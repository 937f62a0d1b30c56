"""Certificate helpers shared by the verifiers: bounded loading, validity, issuer checks."""

from __future__ import annotations

import datetime as dt
import hashlib
import warnings

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from p2pinfer.trust.errors import CertificateChainError, EvidenceFormatError, ValidityError

MAX_CERT_BYTES = 16 << 10
MAX_PEM_BYTES = 256 << 10
MAX_CHAIN = 8

Timestamp = int | float | dt.datetime


def as_datetime(now: Timestamp) -> dt.datetime:
    """POSIX seconds or an aware datetime -> aware UTC datetime."""
    if isinstance(now, dt.datetime):
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        return now.astimezone(dt.UTC)
    if isinstance(now, bool) or not isinstance(now, (int, float)):
        raise TypeError("now must be POSIX seconds or an aware datetime")
    return dt.datetime.fromtimestamp(now, dt.UTC)


def as_posix(now: Timestamp) -> int:
    return int(as_datetime(now).timestamp())


def load_certs(
    blobs: list[bytes] | tuple[bytes, ...], what: str = "certificate"
) -> list[x509.Certificate]:
    """DER or PEM blobs (a PEM blob may hold several) -> certificates, leaf first."""
    out: list[x509.Certificate] = []
    for blob in blobs:
        if not isinstance(blob, (bytes, bytearray)):
            raise EvidenceFormatError(f"{what} must be bytes", check="certificate")
        blob = bytes(blob)
        is_pem = blob.lstrip().startswith(b"-----BEGIN")
        if len(blob) > (MAX_PEM_BYTES if is_pem else MAX_CERT_BYTES):
            raise EvidenceFormatError(
                f"{what} of {len(blob)} bytes is too large", check="certificate"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                if is_pem:
                    out.extend(x509.load_pem_x509_certificates(blob))
                else:
                    out.append(x509.load_der_x509_certificate(blob))
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise EvidenceFormatError(
                f"{what} is not a valid X.509 certificate", check="certificate"
            ) from None
        if len(out) > MAX_CHAIN:
            raise EvidenceFormatError(f"more than {MAX_CHAIN} certificates", check="certificate")
    return out


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(der(cert)).hexdigest()


def check_validity(cert: x509.Certificate, now: dt.datetime, what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise ValidityError(f"{what} certificate is not valid yet at {now.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise ValidityError(f"{what} certificate expired at {cert.not_valid_after_utc.isoformat()}")


def verify_rsa_pss_sha384(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    """AMD's chains: RSA-PSS, SHA-384, MGF1-SHA-384, salt length 48."""
    _check_names(cert, issuer, what)
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise CertificateChainError(f"{what}: issuer key is not RSA")
    try:
        key.verify(
            cert.signature,
            cert.tbs_certificate_bytes,
            padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48),
            hashes.SHA384(),
        )
    except InvalidSignature:
        raise CertificateChainError(f"{what}: signature does not verify under its issuer") from None


def verify_ecdsa_sha384(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    """NVIDIA's chains: ECDSA P-384 with SHA-384."""
    _check_names(cert, issuer, what)
    key = issuer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise CertificateChainError(f"{what}: issuer key is not ECDSA P-384")
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise CertificateChainError(f"{what}: signature does not verify under its issuer") from None


def _check_names(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    if cert.issuer != issuer.subject:
        raise CertificateChainError(f"{what}: issuer name does not match the next certificate")
