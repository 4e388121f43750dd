"""Destinations that misbehave on purpose, over real loopback sockets: pynetdicom SCPs and a silent listener."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pydicom import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.peers import free_port


@dataclass
class StoreLog:
    received: list[str] = field(default_factory=list)  # SOP Instance UIDs, in arrival order
    calls: int = 0


@contextmanager
def store_scp(
    status: Callable[[StoreLog, Dataset], int] = lambda log, ds: 0x0000,
    *,
    only_ct: bool = False,
    delay_s: float = 0.0,
    require_called_aet: str | None = None,
) -> Iterator[tuple[int, StoreLog]]:
    """A C-STORE SCP on a free port answering with ``status(log, dataset)``; yields (port, log)."""
    log = StoreLog()

    def handle(event: evt.Event) -> int:
        log.calls += 1
        if delay_s:
            time.sleep(delay_s)
        ds = event.dataset
        code = status(log, ds)
        if code == 0x0000:
            log.received.append(str(ds.SOPInstanceUID))
        return code

    ae = AE(ae_title=require_called_aet or "TEST_SCP")
    if only_ct:
        ae.add_supported_context(CTImageStorage)
    else:
        ae.supported_contexts = AllStoragePresentationContexts
    ae.require_called_aet = require_called_aet is not None
    ae.dimse_timeout = ae.network_timeout = 30
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)])
    try:
        yield port, log
    finally:
        server.shutdown()


@contextmanager
def silent_listener() -> Iterator[int]:
    """Accepts TCP connections and never says a word (a hanging destination)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        sock.close()
