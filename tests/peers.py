"""Real peers for tests: Orthanc (Debian package) and dcmtk tools, started on free loopback ports.

dcmtk binaries are called by full path: pynetdicom installs its own ``storescu``/``storescp`` into the
venv's ``bin/``, which would shadow them.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DCMTK_BIN = Path("/usr/bin")
ORTHANC_BIN = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


def dcmtk(tool: str) -> str:
    """Full path of a dcmtk tool (``storescu``, ``echoscu``, ``dsrdump``...)."""
    return str(DCMTK_BIN / tool)


def have_dcmtk() -> bool:
    return Path(dcmtk("storescu")).exists() and Path(dcmtk("dsrdump")).exists()


def have_orthanc() -> bool:
    return Path(ORTHANC_BIN).exists()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


@dataclass
class Orthanc:
    """A throwaway Orthanc with its own storage, DICOM and HTTP ports, and named modalities."""

    workdir: Path
    aet: str = "ORTHANC"
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # name -> (AET, host, port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict[str, Any]:
        return {
            "Name": "dicom_agent-test",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "UnknownSopClassAccepted": True,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "Plugins": [],
            "StableAge": 1,
            "HttpTimeout": 60,
            "DicomScuTimeout": 30,
            "LoadPrivateDictionary": False,
        }

    def start(self) -> Orthanc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(self.config()))
        log = (self.workdir / "orthanc.log").open("wb")
        self.proc = subprocess.Popen([ORTHANC_BIN, str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.workdir / 'orthanc.log').read_text()[-2000:]}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        raise TimeoutError("Orthanc did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def request(self, method: str, path: str, body: Any = None, timeout: float = 120) -> Any:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        ctype = resp.headers.get("Content-Type", "")
        return json.loads(raw) if "json" in ctype else raw

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body)

    def upload(self, path: Path) -> Any:
        return self.post("/instances", path.read_bytes())

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Registers a DICOM peer at run time (REST ``PUT /modalities/{name}``)."""
        self.modalities[name] = (aet, host, port)
        self.request("PUT", f"/modalities/{name}", {"AET": aet, "Host": host, "Port": port})

    def instances(self) -> list[str]:
        return list(self.get("/instances"))
