"""District side of the terminals' TLS client certificates: sign a device's request.

A terminal makes its own key and a certificate signing request with the subject
``O=<district>, CN=<terminal>`` (deploy/raspberrypi/motcua_device.py). The district
checks the request and signs it with its terminals' CA (``motcua district sign-csr``):

- the request's own signature is valid (it was made with the key it carries);
- the subject is exactly one O and one CN, O is this district and CN a valid terminal id
  (a topic level: the broker ACL maps the certificate's CN to the terminal's topics);
- the key is EC P-256/P-384, Ed25519 or RSA of at least 2048 bits;
- the CA key belongs to the CA certificate, which is a CA and valid now.

Extensions asked for in the request are ignored; the certificate gets its own: not a CA,
digital signature only, client authentication only, key identifiers. Every refusal is a
``DistrictError`` naming the reason; nothing is written then.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.errors import DistrictError
from sync.topics import check_id

#: longest validity a terminal certificate gets; 825 days is the CA/Browser Forum's old
#: ceiling, and the device doctor warns 30 days before expiry, so yearly rotation is usual
MAX_DAYS = 825
#: how far back the validity starts: a terminal whose clock is a few minutes behind
#: the CA's must not see a "not yet valid" certificate
BACKDATE = datetime.timedelta(minutes=5)
#: the curves every broker's TLS 1.2 and 1.3 accepts for client certificates
CURVES = (ec.SECP256R1, ec.SECP384R1)
MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class Issued:
    """A signed terminal certificate and what an operator wants to see of it."""

    pem: bytes
    terminal_id: str
    serial: int
    not_after: datetime.datetime
    sha256: str


def _one(name: x509.Name, oid: x509.ObjectIdentifier, what: str) -> str:
    values = name.get_attributes_for_oid(oid)
    if len(values) != 1:
        raise DistrictError(f"the request's subject must have exactly one {what}, "
                            f"it has {len(values)}")
    return str(values[0].value)


def _check_key(key: object) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, CURVES):
            raise DistrictError(f"the request's EC key is on {key.curve.name}; "
                                "use P-256 or P-384")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise DistrictError(f"the request's RSA key has {key.key_size} bits; "
                                f"at least {MIN_RSA_BITS} are needed")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise DistrictError(f"the request's key type {type(key).__name__} is not accepted")


def sign_terminal_csr(csr_pem: bytes, ca_cert_pem: bytes, ca_key_pem: bytes, *,
                      district_id: str, days: int = 365,
                      now: datetime.datetime | None = None) -> Issued:
    """Check a terminal's request and sign it with the terminals' CA (module text)."""
    if not 1 <= days <= MAX_DAYS:
        raise DistrictError(f"validity of {days} days: must be 1..{MAX_DAYS}")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise DistrictError("not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise DistrictError("the request's signature does not match its key "
                            "(damaged or altered in transit)")
    org = _one(csr.subject, NameOID.ORGANIZATION_NAME, "O (district)")
    terminal = _one(csr.subject, NameOID.COMMON_NAME, "CN (terminal id)")
    if len(csr.subject) != 2:
        raise DistrictError(f"the request's subject must be only O and CN, got "
                            f"{csr.subject.rfc4514_string()}")
    if org != district_id:
        raise DistrictError(f"the request is for district {org!r}, this is {district_id!r}")
    try:
        check_id(terminal, "terminal id")
    except ValueError as exc:
        raise DistrictError(str(exc)) from None
    try:
        public_key = csr.public_key()
    except UnsupportedAlgorithm:
        raise DistrictError("the request's key type is not supported") from None
    _check_key(public_key)

    try:
        ca = x509.load_pem_x509_certificate(ca_cert_pem)
    except ValueError:
        raise DistrictError("the CA certificate is not a PEM certificate") from None
    try:
        ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise DistrictError(f"cannot read the CA key (PEM, unencrypted): {exc}") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
                      | ed25519.Ed25519PrivateKey):
        raise DistrictError(f"CA key type {type(ca_key).__name__} cannot sign certificates")
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if ca_key.public_key().public_bytes(der, pub) != ca.public_key().public_bytes(der, pub):
        raise DistrictError("the CA key does not belong to the CA certificate")
    try:
        is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise DistrictError("the CA certificate is not a CA (basicConstraints CA:FALSE)")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if not ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
        raise DistrictError(f"the CA certificate is not valid now "
                            f"({ca.not_valid_before_utc:%Y-%m-%d} .. "
                            f"{ca.not_valid_after_utc:%Y-%m-%d})")
    not_after = min(now + datetime.timedelta(days=days), ca.not_valid_after_utc)

    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
    )
    algorithm = None if isinstance(ca_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    try:
        cert = builder.sign(ca_key, algorithm)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise DistrictError(f"cannot sign the certificate: {exc}") from None
    return Issued(
        pem=cert.public_bytes(serialization.Encoding.PEM),
        terminal_id=terminal,
        serial=cert.serial_number,
        not_after=cert.not_valid_after_utc,
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )
