"""Ingest throughput of our SCP against Orthanc and dcmtk's storescp, measured side by side in one run.

Sender: dcmtk's ``storescu`` (full path: pynetdicom shadows it in the venv), 1 association, or 4 concurrent
associations (the files split four ways, one storescu each). Receivers, started fresh for each set and
TCP_NODELAY mode; every round sends a new copy of the set (new UIDs) to each receiver in turn:

* ``ours``    ``python -m dicom_agent scp``: spool → fsync → rename → SQLite row → Success (the real durable path);
              with ``--ours-processes 1,2`` also the same with ``SCP_PROCESSES=2`` (SO_REUSEPORT), shown as ``ours×2``;
* ``orthanc`` Debian's Orthanc (fdatasync per file + SQLite index), configured as tests/peers.py does;
* ``storescp`` dcmtk's storescp ``--fork`` writing files (no fsync, no index: the speed limit).

Sets: ``ct`` (512×512 16-bit slices, 500 at scale 1), ``dx`` (~10 MB radiographs, 50), ``tiny`` (64×64, 2000).
TCP_NODELAY ``on``/``off``: the ``TCP_NODELAY`` environment variable (``1`` / unset) given to storescu, storescp
and Orthanc (dcmtk keeps Nagle on unless it is set); our SCP sets TCP_NODELAY and re-arms TCP_QUICKACK itself.

Time: from starting the storescu process(es) to the last one exiting (storescu's own start and file scan are
in it, alike for every receiver). Every send is checked: the receiver must hold every new instance afterwards
(index rows, Orthanc's count, files). Prints instances/s, MB/s (medians of ``--rounds``), peak RSS over the set
(VmHWM; ours: the SCP process plus its extra receiving processes), and the ratios ours/peer; writes
``bench/results/ingest.json`` (and the log of any receiver a send failed on under ``bench/results/ingest-logs/``).

    python bench/ingest.py [--scale 0.1] [--rounds 3] [--sets ct,dx,tiny] [--assocs 1,4] [--nodelay on,off]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import (  # noqa: E402
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from tests.peers import Orthanc, dcmtk, free_port  # noqa: E402

AET = "DICOM_AGENT"
RESULTS = REPO / "bench" / "results" / "ingest.json"
LOGS = RESULTS.parent / "ingest-logs"
# name -> (SOP class, modality, rows, columns, instances at scale 1)
SETS: dict[str, tuple[str, str, int, int, int]] = {
    "ct": (CTImageStorage, "CT", 512, 512, 500),
    "dx": (DigitalXRayImageStorageForPresentation, "DX", 2560, 2048, 50),
    "tiny": (CTImageStorage, "CT", 64, 64, 2000),
}


# ---- data ------------------------------------------------------------------------------------------------------
def make_set(name: str, folder: Path, count: int, seed: int = 0) -> list[Path]:
    """One study, one series of ``count`` uncompressed 16-bit images (Explicit VR Little Endian)."""
    sop_class, modality, rows, cols, _ = SETS[name]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = (rng.normal(1000, 200, (rows, cols))).clip(0, 4095).astype(np.uint16)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for i in range(count):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Bench^Ingest", "BENCH1", "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260101", "120000", "B1", "1"
        ds.ReferringPhysicianName, ds.Manufacturer = "", "bench"
        ds.StudyDescription = f"ingest benchmark {name} (synthetic)"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, i + 1
        ds.BodyPartExamined = "CHEST"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if modality == "CT":
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.FrameOfReferenceUID = frame
            ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1.0
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [0.0, 0.0, float(i)]
            ds.RescaleIntercept, ds.RescaleSlope, ds.KVP = -1024, 1, 120
        else:
            ds.ImageType = ["ORIGINAL", "PRIMARY"]
            ds.PresentationIntentType, ds.PixelSpacing, ds.ImagerPixelSpacing = (
                "FOR PRESENTATION",
                [0.14, 0.14],
                [0.14, 0.14],
            )
            ds.PatientOrientation = ["L", "F"]
        pixels = np.roll(base, i, axis=1)  # different bytes per instance, same cost to make
        ds.PixelData = pixels.tobytes()
        path = folder / f"{i + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# ---- receivers -------------------------------------------------------------------------------------------------
def _proc_hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids = (task / "children").read_text().split()
            for kid in map(int, kids):
                out += [kid, *_descendants(kid)]
    except OSError:
        pass
    return out


@dataclass
class Receiver:
    """A started receiver: where to send, how many instances it holds, its peak RSS, how to stop it."""

    name: str
    port: int
    called_aet: str
    count: Callable[[], int]
    stop: Callable[[], None]
    rss: Callable[[], int | None] = lambda: None
    log: Path | None = None  # kept under bench/results/ingest-logs/ when a send to this receiver failed


def start_ours(work: Path, processes: int, env_extra: dict[str, str]) -> Receiver:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_AGENT_")}
    env.update(env_extra)
    db = work / "node.db"
    env.update(
        {
            "DICOM_AGENT_STORAGE_DIR": str(work / "storage"),
            "DICOM_AGENT_DATABASE_URL": f"sqlite:///{db}",
            "DICOM_AGENT_BROKER_URL": f"sqla+sqlite:///{work / 'broker.db'}",
            "DICOM_AGENT_DICOM_HOST": "127.0.0.1",
            "DICOM_AGENT_DICOM_PORT": str(port),
            "DICOM_AGENT_MIN_FREE_BYTES": "0",
            "DICOM_AGENT_STUDY_QUIET_SECONDS": "3600",  # no completion/routing inside the measurement
            "DICOM_AGENT_SCP_PROCESSES": str(processes),
            "DICOM_AGENT_LOG_LEVEL": "WARNING",
        }
    )
    log = (work / "scp.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "dicom_agent", "scp"], cwd=REPO, env=env, stdout=log, stderr=log)
    _wait_listening(port, proc, work / "scp.log")
    if processes > 1:  # the extra processes bind the same port: wait until they run
        deadline = time.monotonic() + 60
        while len(_descendants(proc.pid)) < processes - 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3.0)  # spawned interpreters import the package before they listen

    def count() -> int:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM instance").fetchone()[0])

    def rss() -> int:
        return _proc_hwm(proc.pid) + sum(_proc_hwm(p) for p in _descendants(proc.pid))

    def stop() -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    name = "ours" if processes == 1 else f"ours×{processes}"
    return Receiver(name, port, AET, count, stop, rss, work / "scp.log")


def start_orthanc(work: Path) -> Receiver:
    peer = Orthanc(work / "orthanc").start()

    def count() -> int:
        return int(peer.get("/statistics")["CountInstances"])

    def rss() -> int | None:
        return _proc_hwm(peer.proc.pid) if peer.proc is not None else None

    return Receiver("orthanc", peer.dicom_port, peer.aet, count, peer.stop, rss, peer.workdir / "orthanc.log")


def start_storescp(work: Path) -> Receiver:
    port = free_port()
    out = work / "storescp"
    out.mkdir(parents=True)
    log = (work / "storescp.log").open("ab")
    proc = subprocess.Popen([dcmtk("storescp"), "--fork", "-od", str(out), str(port)], stdout=log, stderr=log)
    _wait_listening(port, proc, work / "storescp.log")

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    return Receiver(
        "storescp", port, "STORESCP", lambda: sum(1 for _ in out.iterdir()), stop, log=work / "storescp.log"
    )


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited: {log.read_text(errors='replace')[-2000:]}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


@contextmanager
def nodelay_env(mode: str) -> Iterator[dict[str, str]]:
    """``on``: TCP_NODELAY=1 for every dcmtk-based process started inside; ``off``: unset (dcmtk's default)."""
    saved = os.environ.pop("TCP_NODELAY", None)
    if mode == "on":
        os.environ["TCP_NODELAY"] = "1"
    try:
        yield dict(os.environ)
    finally:
        os.environ.pop("TCP_NODELAY", None)
        if saved is not None:
            os.environ["TCP_NODELAY"] = saved


# ---- sending ---------------------------------------------------------------------------------------------------
def send(files: list[Path], receiver: Receiver, assocs: int, work: Path) -> float:
    """Seconds from starting the storescu process(es) until the last one exits."""
    chunks = [files[i::assocs] for i in range(assocs)]
    procs = []
    t0 = time.perf_counter()
    for n, chunk in enumerate(chunks):
        log = (work / f"storescu{n}.log").open("ab")
        cmd = [dcmtk("storescu"), "-aet", "BENCH", "-aec", receiver.called_aet, "127.0.0.1", str(receiver.port)]
        procs.append(subprocess.Popen([*cmd, *map(str, chunk)], stdout=log, stderr=log))
    codes = [p.wait() for p in procs]
    elapsed = time.perf_counter() - t0
    if any(codes):
        raise RuntimeError(f"storescu to {receiver.name} exited {codes}; see {work}")
    return elapsed


# ---- measurement -----------------------------------------------------------------------------------------------
@dataclass
class Cell:
    set: str
    assocs: int
    nodelay: str
    receiver: str
    instances: int
    megabytes: float
    seconds: list[float] = field(default_factory=list)
    peak_rss_mb: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    @property
    def inst_per_s(self) -> float | None:
        m = self.median_s
        return self.instances / m if m else None

    @property
    def mb_per_s(self) -> float | None:
        m = self.median_s
        return self.megabytes / m if m else None


def block(
    name: str,
    count: int,
    nodelay: str,
    assoc_modes: list[int],
    rounds: int,
    starters: list[tuple[str, Callable[[Path], Receiver]]],
    root: Path,
) -> list[Cell]:
    """One set in one TCP_NODELAY mode: every receiver started once; each round sends a fresh copy of the set
    (new UIDs: no receiver ever sees a duplicate) to each receiver in turn, so load changes on a shared
    machine hit all of them alike. Peak RSS is read when the block ends (it covers both association modes)."""
    receivers: list[Receiver] = []
    workdirs: list[Path] = []
    cells = {(a, n): Cell(name, a, nodelay, n, count, 0.0) for a in assoc_modes for n, _ in starters}
    try:
        for receiver_name, starter in starters:
            workdirs.append(Path(tempfile.mkdtemp(prefix=f"{receiver_name}-{name}-{nodelay}-", dir=root)))
            receivers.append(starter(workdirs[-1]))
        for assocs in assoc_modes:
            for r in range(rounds):
                files = make_set(name, root / "data" / f"{name}-{assocs}-{r}", count, seed=r)
                megabytes = sum(p.stat().st_size for p in files) / 2**20
                for receiver in receivers:
                    cell = cells[(assocs, receiver.name)]
                    cell.megabytes = megabytes
                    try:
                        before = receiver.count()
                        elapsed = send(files, receiver, assocs, root)
                        held = receiver.count() - before
                    except (RuntimeError, OSError) as exc:
                        cell.errors.append(f"round {r}: {exc}")
                        continue
                    if held != len(files):
                        cell.errors.append(f"round {r}: {held}/{len(files)} new instances held after the send")
                        continue
                    cell.seconds.append(elapsed)
                for p in files:
                    p.unlink()
    finally:
        for receiver in receivers:
            rss = receiver.rss()
            for (_, receiver_name), cell in cells.items():
                if receiver_name == receiver.name and rss:
                    cell.peak_rss_mb.append(rss / 2**20)
            receiver.stop()
            failed = any(c.errors for (_, n), c in cells.items() if n == receiver.name)
            if failed and receiver.log is not None and receiver.log.exists():
                LOGS.mkdir(parents=True, exist_ok=True)
                shutil.copy(receiver.log, LOGS / f"{receiver.name}-{name}-{nodelay}.log")
        for work in workdirs:
            shutil.rmtree(work, ignore_errors=True)
    return list(cells.values())


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ratios(cells: list[Cell]) -> dict[tuple[str, int, str, str], dict[str, float]]:
    """For each of our rows: its instances/s over Orthanc's and over storescp's in the same set/assoc/mode."""
    out: dict[tuple[str, int, str, str], dict[str, float]] = {}
    by_key = {(c.set, c.assocs, c.nodelay, c.receiver): c for c in cells}
    for c in cells:
        if not c.receiver.startswith("ours") or not c.inst_per_s:
            continue
        for peer in ("orthanc", "storescp"):
            other = by_key.get((c.set, c.assocs, c.nodelay, peer))
            if other is not None and other.inst_per_s:
                out.setdefault((c.set, c.assocs, c.nodelay, c.receiver), {})[peer] = c.inst_per_s / other.inst_per_s
    return out


def table(cells: list[Cell]) -> str:
    r = ratios(cells)
    lines = [
        f"{'set':5s} {'assoc':>5s} {'nodelay':>7s} {'receiver':9s} {'inst/s':>7s} {'MB/s':>7s} {'peak RSS MB':>11s}"
        f" {'÷orthanc':>8s} {'÷storescp':>9s}  notes"
    ]
    for c in cells:
        mine = r.get((c.set, c.assocs, c.nodelay, c.receiver), {})
        rss = max(c.peak_rss_mb) if c.peak_rss_mb else None
        note = "; ".join(c.errors)[:80]
        lines.append(
            f"{c.set:5s} {c.assocs:5d} {c.nodelay:>7s} {c.receiver:9s} {fmt(c.inst_per_s):>7s}"
            f" {fmt(c.mb_per_s, 1):>7s} {fmt(rss):>11s} {fmt(mine.get('orthanc'), 2):>8s}"
            f" {fmt(mine.get('storescp'), 2):>9s}  {note}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every set's instance count (min 8)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per cell; the median is reported")
    ap.add_argument("--sets", default="ct,dx,tiny")
    ap.add_argument("--assocs", default="1,4")
    ap.add_argument("--nodelay", default="on,off")
    ap.add_argument("--receivers", default="ours,orthanc,storescp")
    ap.add_argument("--ours-processes", default="1", help="comma list: SCP_PROCESSES values to run as receivers")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    if not Path(dcmtk("storescu")).exists():
        sys.exit("dcmtk is not installed (scripts/setup.sh --peers)")
    sets = [s for s in args.sets.split(",") if s]
    assoc_modes = [int(a) for a in args.assocs.split(",")]
    nodelays = [m for m in args.nodelay.split(",") if m]
    processes = [int(p) for p in args.ours_processes.split(",")]
    wanted = args.receivers.split(",")
    starters: list[tuple[str, Callable[[Path], Receiver]]] = []
    if "ours" in wanted:
        starters += [("ours" if p == 1 else f"ours×{p}", lambda w, p=p: start_ours(w, p, {})) for p in processes]
    if "orthanc" in wanted:
        starters.append(("orthanc", start_orthanc))
    if "storescp" in wanted:
        starters.append(("storescp", start_storescp))

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop every receiver
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        for name in sets:
            count = max(8, round(SETS[name][4] * args.scale))
            print(f"# set {name}: {count} instances per send", flush=True)
            for nodelay in nodelays:
                with nodelay_env(nodelay):
                    done = block(name, count, nodelay, assoc_modes, args.rounds, starters, root)
                cells += done
                for cell in done:
                    print(
                        f"  {name} assoc={cell.assocs} nodelay={nodelay} {cell.receiver:9s} "
                        f"{fmt(cell.inst_per_s)} inst/s {fmt(cell.mb_per_s, 1)} MB/s {('; '.join(cell.errors))[:100]}",
                        flush=True,
                    )

    print()
    print(table(cells))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
        "sender": "dcmtk storescu (" + dcmtk("storescu") + ")",
        "scale": args.scale,
        "rounds": args.rounds,
        "cells": [
            asdict(c)
            | {
                "median_s": c.median_s,
                "inst_per_s": c.inst_per_s,
                "mb_per_s": c.mb_per_s,
                "ratio": ratios(cells).get((c.set, c.assocs, c.nodelay, c.receiver), {}),
            }
            for c in cells
        ],
    }
    args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
