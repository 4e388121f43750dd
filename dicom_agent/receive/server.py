"""The C-STORE SCP: a pynetdicom AE with our contexts, peer checks, limits, timeouts and optional TLS.

``start_server(settings)`` runs in the background and returns a handle (tests, ``serve``);
``serve_forever(settings)`` is the ``dicom-agent scp`` role: migrations, the study sweeper, optional extra
receiving processes sharing the port (SO_REUSEPORT: one association is bound by one Python thread, so
several processes are the way past one core), and a clean stop on SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import signal
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicom_agent.config import Settings
from dicom_agent.db.session import session_factory
from dicom_agent.receive import handlers, spooling
from dicom_agent.receive.contexts import supported_contexts
from dicom_agent.receive.ingest import Ingest
from dicom_agent.receive.peers import PeerPolicy
from dicom_agent.store.filestore import FileStore, SpoolFile

log = logging.getLogger(__name__)

_NOBODY = "\x00"  # an AE title no peer can send: "allow nobody" for pynetdicom's calling-AE check
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class NodeAE(AE):
    """pynetdicom's AE plus what our socket, spool and peer checks need to find from their threads."""

    def __init__(self, ae_title: str, ingest: Ingest, peers: PeerPolicy, max_read: int) -> None:
        super().__init__(ae_title=ae_title)
        self.spool_owner = ingest
        self.peer_policy = peers
        self.max_pdu_read = max_read

    @property
    def require_calling_aet(self) -> list[str]:
        """Consulted by pynetdicom's ACSE in the association's own thread, so the peer address is known:
        that is how ``AET@host`` entries are enforced with a proper A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
        if not self.peer_policy.restricted:
            return []
        assoc = threading.current_thread()
        address = assoc.requestor.address if isinstance(assoc, Association) else None
        return self.peer_policy.titles_for(address) or [_NOBODY]

    @require_calling_aet.setter
    def require_calling_aet(self, value: list[str]) -> None:
        raise AttributeError("set ALLOWED_PEERS instead")


class _NodeSocket(AssociationSocket):
    """Reads PDUs in large chunks, refuses a PDU longer than the node allows before buffering it, and
    re-arms TCP_QUICKACK so a sender with Nagle on is not stalled by delayed ACKs (design notes)."""

    max_read: int = 0

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > self.max_read:
            raise OSError(f"peer announced a PDU of {nr_bytes} bytes, over the limit of {self.max_read}")
        sock = self.socket
        assert sock is not None
        buf = bytearray()
        while len(buf) < nr_bytes:
            chunk = sock.recv(min(nr_bytes - len(buf), 1 << 18))
            if not chunk:
                break
            buf += chunk
        if _TCP_QUICKACK is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        return buf


class _NodeRequestHandler(RequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        ae = self.server.ae
        assert isinstance(ae, NodeAE)
        # A peer that stops mid-PDU must not hold a reader thread forever.
        sock.settimeout(ae.network_timeout)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(sock, ssl.SSLSocket):
            sock.settimeout(ae.acse_timeout)
            try:
                sock.do_handshake()
            except (OSError, ssl.SSLError) as exc:
                log.warning("TLS handshake with %s failed: %s", self.client_address, exc)
                with contextlib.suppress(OSError):
                    sock.close()
                return
            sock.settimeout(ae.network_timeout)
        super().handle()

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        wrapper = assoc.dul.socket
        assert wrapper is not None
        wrapper.__class__ = _NodeSocket  # same state, our recv (pynetdicom has no socket-class hook)
        assert isinstance(wrapper, _NodeSocket)
        ae = self.server.ae
        assert isinstance(ae, NodeAE)
        wrapper.max_read = ae.max_pdu_read
        return assoc


class _NodeServer(ThreadedAssociationServer):
    reuse_port = False

    def server_bind(self) -> None:
        if self.reuse_port and self.socket is not None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accepts without the TLS handshake: it runs in the connection's own thread, so a silent client
        cannot block the accept loop."""
        assert self.socket is not None
        client, address = self.socket.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("error while handling a connection from %s", client_address)


@dataclass
class ServerHandle:
    """A running SCP: ``port`` (useful with port 0), ``shutdown()``."""

    ae: NodeAE
    server: _NodeServer
    thread: threading.Thread
    extras: list[Any] = field(default_factory=list)  # things to stop with it (sweeper)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def shutdown(self) -> None:
        for extra in self.extras:
            extra.stop()
        self.ae.shutdown()
        self.thread.join(10)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """DICOM TLS (PS3.15 B.1 / BCP 195): server certificate and key; with a CA, clients must present a
    certificate it signed."""
    if settings.tls_cert is None and settings.tls_key is None:
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ValueError("TLS needs both TLS_CERT and TLS_KEY")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    if settings.tls_ca is not None:
        ctx.load_verify_locations(cafile=str(settings.tls_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def max_pdu_read(settings: Settings) -> int:
    """The longest PDU we buffer: the negotiated maximum, or with "unlimited" the dataset size limit."""
    if settings.max_pdu_bytes:
        return max(settings.max_pdu_bytes, 1 << 16) + 16
    return settings.max_dataset_bytes + (1 << 16)


def build_ae(settings: Settings) -> NodeAE:
    filestore = FileStore.open(settings.storage_dir, settings.min_free_bytes)
    filestore.clean_stale_spools()
    ingest = Ingest(
        filestore=filestore,
        session_factory=session_factory(settings.database_url),
        max_dataset_bytes=settings.max_dataset_bytes,
        duplicate_policy=settings.duplicate_policy,
    )
    ae = NodeAE(settings.ae_title, ingest, PeerPolicy.parse(settings.allowed_peers), max_pdu_read(settings))
    ae.supported_contexts = supported_contexts()
    ae.maximum_pdu_size = settings.max_pdu_bytes
    ae.maximum_associations = settings.max_associations
    ae.require_called_aet = settings.require_called_ae
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    return ae


def start_server(settings: Settings, *, reuse_port: bool = False, sweeper: bool = False) -> ServerHandle:
    """Starts the SCP in background threads and returns at once."""
    spooling.install()
    _config.LOG_HANDLER_LEVEL = "none"  # pynetdicom's per-PDU debug handlers cost time on every PDU
    ae = build_ae(settings)
    assert isinstance(ae.spool_owner, Ingest)
    bindings: list[Any] = [
        (evt.EVT_C_STORE, handlers.handle_store, [ae.spool_owner]),
        (evt.EVT_C_ECHO, handlers.handle_echo),
        (evt.EVT_CONN_CLOSE, handlers.handle_connection_closed),
        (evt.EVT_ACCEPTED, handlers.handle_accepted),
        (evt.EVT_REJECTED, handlers.handle_rejected),
        (evt.EVT_ABORTED, handlers.handle_aborted),
    ]
    _NodeServer.reuse_port = reuse_port
    server = ae.make_server(
        (settings.dicom_host, settings.dicom_port),
        ae_title=settings.ae_title,
        ssl_context=tls_context(settings),
        evt_handlers=bindings,
        server_class=_NodeServer,
        request_handler=_NodeRequestHandler,
    )
    assert isinstance(server, _NodeServer)
    ae._servers.append(server)
    thread = threading.Thread(target=server.serve_forever, name="dicom-agent-scp", daemon=True)
    thread.start()
    handle = ServerHandle(ae, server, thread)
    if sweeper:
        from dicom_agent.studies.sweep import Sweeper  # the scp role composes receive + studies

        handle.extras.append(Sweeper(settings).start())
    log.info(
        "SCP %s listening on %s:%d (TLS %s)",
        settings.ae_title,
        settings.dicom_host,
        handle.port,
        "on" if server.ssl_context else "off",
    )
    return handle


def serve_forever(settings: Settings) -> None:
    """The ``dicom-agent scp`` role: runs until SIGTERM or SIGINT."""
    from dicom_agent.db.migrate import upgrade

    upgrade(settings.database_url)
    many = settings.scp_processes > 1
    handle = start_server(settings, reuse_port=many, sweeper=True)
    children = []
    if many:
        spawn = multiprocessing.get_context("spawn")
        for _ in range(settings.scp_processes - 1):
            child = spawn.Process(target=_child_main, args=(settings.model_dump(),), daemon=True)
            child.start()
            children.append(child)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("SCP stopping")
    for child in children:
        child.terminate()
    handle.shutdown()
    for child in children:
        child.join(10)


def _child_main(settings_data: dict[str, Any]) -> None:
    """An extra receiving process: same port (SO_REUSEPORT), same storage and index, no sweeper."""
    with contextlib.suppress(OSError, AttributeError):  # die with the parent, even on SIGKILL (Linux)
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    from dicom_agent.logging import setup_logging

    settings = Settings(**settings_data)
    setup_logging(settings.log_level, settings.log_json)
    handle = start_server(settings, reuse_port=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    handle.shutdown()


__all__ = ["NodeAE", "ServerHandle", "SpoolFile", "serve_forever", "start_server"]
