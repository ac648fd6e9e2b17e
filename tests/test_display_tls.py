"""The display API with TLS and client certificates (what a non-loopback address requires).

Certificates are made here with `cryptography` (a CA, a server certificate for 127.0.0.1,
client certificates from that CA and from a stranger CA).
"""

from __future__ import annotations

import datetime
import threading
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from display_fakes import FakeDirectory

from edge.api.server import create_server
from edge.api.state import DisplayState
from edge.config import ApiConfig, DisplayConfig
from edge.display.client import TerminalLink
from edge.display.view import Screen
from proto import display_pb2 as pb
from proto import display_pb2_grpc as pb_grpc


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
          server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        import ipaddress

        b = b.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                         x509.DNSName("localhost")]),
            critical=False,
        )
    return b.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca_key, other_key = _key(), _key()
    ca = _cert("motcua test CA", ca_key, None, ca_key, ca=True)
    other = _cert("stranger CA", other_key, None, other_key, ca=True)
    files: dict[str, bytes] = {"ca.pem": _pem(ca)}
    for name, issuer, ikey, server in [("server", ca, ca_key, True), ("client", ca, ca_key, False),
                                      ("stranger", other, other_key, False)]:
        k = _key()
        files[f"{name}.pem"] = _pem(_cert(name, k, issuer, ikey, server=server))
        files[f"{name}.key"] = _pem_key(k)
    for fname, data in files.items():
        (d / fname).write_bytes(data)
    return {name: d / name for name in files}


def test_tls_requires_a_client_certificate_from_the_terminal_ca(pki: dict[str, Path]) -> None:
    cfg = ApiConfig(listen="127.0.0.1:0", tls_cert=pki["server.pem"], tls_key=pki["server.key"],
                    tls_client_ca=pki["ca.pem"], grace_s=0.2)
    api = create_server(cfg, DisplayState(FakeDirectory()))
    api.start()
    target = f"127.0.0.1:{api.port}"
    ca = pki["ca.pem"].read_bytes()

    def status_with(creds: grpc.ChannelCredentials) -> grpc.StatusCode:
        with grpc.secure_channel(target, creds) as ch:
            try:
                pb_grpc.DisplayStub(ch).GetStatus(pb.GetStatusRequest(), timeout=5)
                return grpc.StatusCode.OK
            except grpc.RpcError as exc:
                return exc.code()  # type: ignore[attr-defined,no-any-return]

    try:
        # no client certificate: the handshake fails
        assert status_with(grpc.ssl_channel_credentials(root_certificates=ca)) == \
            grpc.StatusCode.UNAVAILABLE
        # a certificate from another CA: refused too
        assert status_with(grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=pki["stranger.key"].read_bytes(),
            certificate_chain=pki["stranger.pem"].read_bytes())) == grpc.StatusCode.UNAVAILABLE
        # plaintext against the TLS port: refused
        with grpc.insecure_channel(target) as ch, pytest.raises(grpc.RpcError):
            pb_grpc.DisplayStub(ch).GetStatus(pb.GetStatusRequest(), timeout=5)
        # the terminal CA's client certificate: served
        assert status_with(grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=pki["client.key"].read_bytes(),
            certificate_chain=pki["client.pem"].read_bytes())) == grpc.StatusCode.OK

        # the display client's own TLS settings reach the stream
        screen = Screen()
        stop = threading.Event()
        link = TerminalLink(DisplayConfig(api=target, tls_cert=pki["client.pem"],
                                          tls_key=pki["client.key"], tls_ca=pki["ca.pem"]),
                            screen, stop)
        link.start()
        version, state = screen.get()
        for _ in range(100):
            if state.get("connected"):
                break
            version, state = screen.wait_change(version, 0.1)
        link.close()
        assert state.get("connected") and state["state"] == "idle"
    finally:
        api.stop(0.2)
