"""Run the node's roles as real processes for the end-to-end tests, and wire them to a real Orthanc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers import Orthanc, wait_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Roles:
    """Role processes (``serve``, ``scp``, ``worker``, ``exporter``) sharing one environment; logs in ``workdir``."""

    workdir: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_agent", *args],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a kill reaches the Celery pool children too
        )
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        os.killpg(proc.pid, sig)
        proc.wait(30)

    def stop_all(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # the role's own shutdown stops its children
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{self.log(p.stem)}" for p in sorted(self.workdir.glob("*.log")))


def node_env(port: int, web_port: int, orthanc: Orthanc, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(("DICOM_AGENT_", "PATH", "HOME", "LANG", "PYTHON"))}
    env.update(
        {
            "DICOM_AGENT_DICOM_HOST": "127.0.0.1",
            "DICOM_AGENT_DICOM_PORT": str(port),
            "DICOM_AGENT_WEB_PORT": str(web_port),
            "DICOM_AGENT_DESTINATIONS": f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
            "DICOM_AGENT_STUDY_QUIET_SECONDS": "2",
            "DICOM_AGENT_MIN_FREE_BYTES": "0",
            "DICOM_AGENT_EXPORT_RETRY_BASE_S": "1",
        }
    )
    env.update(extra)
    return env


def send_from_orthanc(orthanc: Orthanc, files: list[Path], node_aet: str, node_port: int) -> list[str]:
    """Uploads the files into Orthanc, then has Orthanc C-STORE each study to the node (Orthanc is the PACS)."""
    if "node" not in orthanc.modalities:
        orthanc.add_modality("node", node_aet, "127.0.0.1", node_port)
    studies: list[str] = []
    for path in files:
        answer = orthanc.upload(path)
        if answer["ParentStudy"] not in studies:
            studies.append(answer["ParentStudy"])
    for study in studies:
        orthanc.post("/modalities/node/store", {"Resources": [study], "Synchronous": True})
    return studies


def results_at_orthanc(orthanc: Orthanc) -> dict[str, dict[str, list[str]]]:
    """StudyInstanceUID → {modality: [Orthanc instance ids]} of the SR, SEG and KO series Orthanc holds."""
    out: dict[str, dict[str, list[str]]] = {}
    for series_id in orthanc.get("/series"):
        series = orthanc.get(f"/series/{series_id}")
        modality = series["MainDicomTags"].get("Modality", "")
        if modality not in {"SR", "SEG", "KO"}:
            continue
        study = orthanc.get(f"/studies/{series['ParentStudy']}")
        uid = study["MainDicomTags"]["StudyInstanceUID"]
        out.setdefault(uid, {}).setdefault(modality, []).extend(series["Instances"])
    return out


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, on_timeout: Callable[[], str]) -> float:
    """Polls ``predicate``; returns the seconds it took, or fails with the role logs."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{on_timeout()}")


def wait_scp(port: int) -> None:
    wait_port(port, timeout=90)
