"""Fixtures for the node tests: an in-process SCP on a free loopback port, and a pynetdicom SCU."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context
from pynetdicom.association import Association

from dicom_agent.config import Settings, get_settings
from dicom_agent.receive.contexts import VERIFICATION
from dicom_agent.receive.server import ServerHandle, start_server
from tests.peers import free_port

StartNode = Callable[..., ServerHandle]


@pytest.fixture
def start_node(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[StartNode]:
    """Starts SCPs on the test's migrated database; keyword arguments override settings (env names)."""
    handles: list[ServerHandle] = []

    def start(**overrides: Any) -> ServerHandle:
        for key, value in overrides.items():
            monkeypatch.setenv(f"DICOM_AGENT_{key.upper()}", str(value))
        get_settings.cache_clear()
        handle = start_server(get_settings())
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.shutdown()


@pytest.fixture
def node(start_node: StartNode) -> ServerHandle:
    return start_node()


@pytest.fixture
def settings(node: ServerHandle) -> Settings:
    return get_settings()


def associate(
    port: int,
    datasets: list[Dataset] | None = None,
    calling: str = "TEST_SCU",
    called: str = "DICOM_AGENT",
    syntaxes: list[str] | None = None,
    contexts: list[Any] | None = None,
    **assoc_kwargs: Any,
) -> Association:
    """Opens an association proposing the SOP classes (and transfer syntaxes) of ``datasets``."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.maximum_pdu_size = 0
    if contexts is None:
        contexts = [build_context(VERIFICATION)]
        pairs = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets or []}
        for sop_class, ts in sorted(pairs):
            contexts.append(build_context(sop_class, syntaxes or [ts]))
    ae.requested_contexts = contexts
    return ae.associate("127.0.0.1", port, ae_title=called, **assoc_kwargs)


def send(port: int, datasets: list[Dataset], **kwargs: Any) -> list[int]:
    """C-STOREs the datasets over one association; returns the statuses (-1: no response)."""
    assoc = associate(port, datasets, **kwargs)
    assert assoc.is_established, "association was not accepted"
    statuses = []
    try:
        for ds in datasets:
            rsp = assoc.send_c_store(ds)
            statuses.append(int(rsp.Status) if "Status" in rsp else -1)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def echo(port: int, **kwargs: Any) -> int:
    assoc = associate(port, **kwargs)
    assert assoc.is_established
    try:
        rsp = assoc.send_c_echo()
        return int(rsp.Status)
    finally:
        assoc.release()


REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class NodeProcess:
    """``python -m dicom_agent scp`` in a subprocess: its own memory to measure, its own signals."""

    root: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def database_url(self) -> str:
        return self.env["DICOM_AGENT_DATABASE_URL"]

    def start(self) -> NodeProcess:
        log = (self.root / "scp.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_agent", "scp"], cwd=REPO_ROOT, env=self.env, stdout=log, stderr=log
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"scp exited: {self.log()[-3000:]}")
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        raise TimeoutError(self.log()[-3000:])

    def log(self) -> str:
        return (self.root / "scp.log").read_text(errors="replace")

    def peak_rss_bytes(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def node_process(root: Path, **settings: Any) -> NodeProcess:
    """A configured (not yet started) subprocess SCP keeping everything under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_AGENT_")}
    port = free_port()
    env.update(
        {
            "DICOM_AGENT_STORAGE_DIR": str(root / "storage"),
            "DICOM_AGENT_DATABASE_URL": f"sqlite:///{root / 'db.sqlite'}",
            "DICOM_AGENT_DICOM_HOST": "127.0.0.1",
            "DICOM_AGENT_DICOM_PORT": str(port),
            "DICOM_AGENT_MIN_FREE_BYTES": "0",
            "DICOM_AGENT_LOG_LEVEL": "INFO",
        }
    )
    env.update({f"DICOM_AGENT_{k.upper()}": str(v) for k, v in settings.items()})
    return NodeProcess(root, port, env)
