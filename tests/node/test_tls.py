"""DICOM TLS (PS3.15 B.1): a real TLS association with a throwaway CA, server and client certificate.

The certificates are made in the test with the ``openssl`` command line tool (the ``cryptography``
package is not a dependency of the project)."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from dicom_agent.receive.server import ServerHandle
from tests.node.conftest import StartNode, associate
from tests.node.factory import make_instance

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl command line tool not installed")


def _openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _key(name: str, cwd: Path) -> None:
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=cwd)


def _self_signed(name: str, common_name: str, cwd: Path) -> None:
    _key(name, cwd)
    key, crt, subject = f"{name}.key", f"{name}.crt", f"/CN={common_name}"
    _openssl("req", "-x509", "-new", "-key", key, "-subj", subject, "-days", "1", "-out", crt, cwd=cwd)


def _signed(name: str, cwd: Path) -> None:
    """A leaf certificate for ``name`` signed by the test CA, valid for localhost and 127.0.0.1."""
    _key(name, cwd)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={name}", "-out", f"{name}.csr", cwd=cwd)
    (cwd / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "1", "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=cwd,
    )  # fmt: skip


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    folder = tmp_path / "pki"
    folder.mkdir()
    _key("ca", folder)
    _self_signed("ca", "Test CA", folder)
    _signed("server", folder)
    _signed("client", folder)
    _self_signed("rogue", "rogue", folder)  # not from our CA
    return folder


@pytest.fixture
def tls_node(start_node: StartNode, pki: Path) -> ServerHandle:
    return start_node(
        tls_cert=pki / "server.crt",
        tls_key=pki / "server.key",
        tls_ca=pki / "ca.crt",
        acse_timeout_s=3,
        network_timeout_s=3,
    )


def _client_ctx(pki: Path, who: str | None = "client") -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.crt"))
    if who:
        ctx.load_cert_chain(str(pki / f"{who}.crt"), str(pki / f"{who}.key"))
    return ctx


def _store_over_tls(port: int, ctx: ssl.SSLContext) -> list[int] | None:
    ds = make_instance()
    assoc = associate(port, [ds], tls_args=(ctx, "localhost"))
    if not assoc.is_established:
        return None
    try:
        return [int(assoc.send_c_store(ds).Status)]
    finally:
        assoc.release()


def test_mutual_tls_association_stores(tls_node: ServerHandle, pki: Path) -> None:
    assert _store_over_tls(tls_node.port, _client_ctx(pki)) == [0]


def test_tls_refuses_clients_without_a_trusted_certificate(tls_node: ServerHandle, pki: Path) -> None:
    assert _store_over_tls(tls_node.port, _client_ctx(pki, None)) is None  # no client certificate
    assert _store_over_tls(tls_node.port, _client_ctx(pki, "rogue")) is None  # self-signed, not our CA
    plain = associate(tls_node.port)  # no TLS at all
    assert not plain.is_established
    assert _store_over_tls(tls_node.port, _client_ctx(pki)) == [0]  # trusted clients still get in


def test_silent_tls_client_does_not_block_the_accept_loop(tls_node: ServerHandle, pki: Path) -> None:
    with socket.create_connection(("127.0.0.1", tls_node.port)):  # connects, never starts the handshake
        assert _store_over_tls(tls_node.port, _client_ctx(pki)) == [0]
