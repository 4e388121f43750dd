"""End-to-end latency and throughput of the pipeline, with a real Orthanc as the PACS receiving the results.

Latency: from the C-STORE response of a study's last instance (sent by this script) to its SR stored at
Orthanc, minus the quiet period, per study type, p50/p95; studies are sent one at a time. The job's own model and
encoder times (from the database) are printed beside it, so the pipeline's overhead (routing, queues, polling,
export) is visible as a ratio.
Throughput: N chest radiographs sent at once; studies/minute until the last SR is at Orthanc, with 1 and 2 worker
processes (production layout: separate scp, worker(s), exporter).

  python bench/e2e.py [--setup embedded|production|both] [--cxr 20] [--ct 20] [--throughput 20]
The production setup needs PostgreSQL and RabbitMQ (DICOM_AGENT_TEST_DATABASE_URL, DICOM_AGENT_TEST_BROKER_URL).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from tests.peers import Orthanc, free_port  # noqa: E402
from tests.pipeline.nodeproc import Roles, node_env, wait_scp  # noqa: E402

QUIET_S = 2.0


def make_studies(root: Path, kind: str, count: int, seed0: int) -> list[list[Path]]:
    from dicom_agent.cli.samples import make_samples

    out = []
    for i in range(count):
        folder = make_samples(root / f"{kind}{i}", (kind,), seed=seed0 + i)[0]
        out.append(sorted(Path(folder).glob("*.dcm")))
    return out


def study_uid(files: list[Path]) -> str:
    from pydicom import dcmread

    return str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def sr_at_orthanc(orthanc: Orthanc, uid: str) -> bool:
    found = orthanc.post("/tools/find", {"Level": "Series", "Query": {"StudyInstanceUID": uid, "Modality": "SR"}})
    return bool(found)


def send(files: list[Path], port: int) -> float:
    """C-STOREs one study; returns the time of the last response."""
    from dicom_agent.export.scu import Peer, send_files

    results = send_files(files, Peer("DICOM_AGENT", "127.0.0.1", port), calling_aet="BENCH")
    assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
    return time.monotonic()


def wait_sr(orthanc: Orthanc, uids: list[str], timeout: float = 900) -> dict[str, float]:
    done: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(uids) and time.monotonic() < deadline:
        for uid in uids:
            if uid not in done and sr_at_orthanc(orthanc, uid):
                done[uid] = time.monotonic()
        time.sleep(0.1)
    if len(done) < len(uids):
        raise TimeoutError(f"{len(uids) - len(done)} SR(s) missing after {timeout}s")
    return done


def job_times(env: dict[str, str]) -> dict[str, tuple[float, float]]:
    from dicom_agent.db.session import make_engine

    with make_engine(env["DICOM_AGENT_DATABASE_URL"]).connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT s.study_instance_uid, j.timings, j.started_at, j.finished_at FROM job j JOIN study s "
                "ON s.id = j.study_id WHERE j.state = 'succeeded'"
            )
        ).all()
    import json
    from datetime import datetime

    def when(value: object) -> datetime | None:  # raw SQL on SQLite returns text
        return datetime.fromisoformat(value) if isinstance(value, str) else value  # type: ignore[return-value]

    out = {}
    for uid, timings, started, finished in rows:
        t = json.loads(timings) if isinstance(timings, str) else timings
        t0, t1 = when(started), when(finished)
        out[uid] = (float(t.get("infer_s", 0.0)), (t1 - t0).total_seconds() if t0 and t1 else 0.0)
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(q * (len(values) - 1))))
    return values[k]


class Setup:
    def __init__(self, name: str, work: Path, orthanc: Orthanc) -> None:
        self.name, self.work, self.orthanc = name, work, orthanc
        work.mkdir(parents=True, exist_ok=True)  # the roles' logs go here
        extra = {
            "DICOM_AGENT_STORAGE_DIR": str(work / "storage"),
            "DICOM_AGENT_STUDY_QUIET_SECONDS": str(QUIET_S),
            "DICOM_AGENT_LOG_LEVEL": "WARNING",
        }
        self.schema = None
        if name == "embedded":
            extra |= {
                "DICOM_AGENT_DATABASE_URL": f"sqlite:///{work / 'node.db'}",
                "DICOM_AGENT_BROKER_URL": f"sqla+sqlite:///{work / 'broker.db'}",
            }
        else:
            pg, mq = os.environ["DICOM_AGENT_TEST_DATABASE_URL"], os.environ["DICOM_AGENT_TEST_BROKER_URL"]
            self.schema = f"bench_{uuid.uuid4().hex[:8]}"
            self.admin = sa.create_engine(pg.replace("postgresql://", "postgresql+psycopg://", 1))
            with self.admin.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{self.schema}"'))
            sep = "&" if "?" in pg else "?"
            extra |= {
                "DICOM_AGENT_DATABASE_URL": f"{pg}{sep}options=-csearch_path%3D{self.schema}",
                "DICOM_AGENT_BROKER_URL": mq,
                "DICOM_AGENT_QUEUE_PREFIX": f"{self.schema}.",
                "DICOM_AGENT_DEFAULT_QUEUE": "cpu",
            }
        self.env = node_env(free_port(), free_port(), orthanc, **extra)
        self.port = int(self.env["DICOM_AGENT_DICOM_PORT"])
        self.roles = Roles(work, self.env)

    def start(self, workers: int = 1) -> None:
        import subprocess

        subprocess.run([sys.executable, "-m", "dicom_agent", "db", "upgrade"], cwd=REPO, env=self.env, check=True)
        if self.name == "embedded" and workers == 1:
            self.roles.start("serve", "serve")
        else:
            self.roles.start("scp", "scp")
            self.roles.start("exporter", "exporter")
            for i in range(workers):
                self.roles.start(f"worker{i}", "worker", "--queues", "cpu,export,gpu", "--device", "cpu")
        wait_scp(self.port)
        time.sleep(8)  # let the workers load the model

    def stop(self) -> None:
        self.roles.stop_all()
        if self.schema:
            with self.admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{self.schema}" CASCADE'))


RESULTS: list[dict[str, object]] = []  # every printed figure, also written to --out


def latency(setup: Setup, studies: dict[str, list[list[Path]]]) -> None:
    for kind, items in studies.items():
        if not items:
            continue
        lat = []
        for files in items:
            uid = study_uid(files)
            t_last = send(files, setup.port)
            t_sr = wait_sr(setup.orthanc, [uid])[uid]
            lat.append((uid, t_sr - t_last - QUIET_S))
        times = job_times(setup.env)
        values = [v for _, v in lat]
        infer = [times[u][0] for u, _ in lat if u in times]
        job = [times[u][1] for u, _ in lat if u in times]
        p50_job = max(statistics.median(job), 1e-6)
        print(
            f"{setup.name:10s} {kind:4s} n={len(values):3d}  latency-minus-quiet p50 {pct(values, 0.5):6.2f}s "
            f"p95 {pct(values, 0.95):6.2f}s | model p50 {statistics.median(infer):5.2f}s, "
            f"job (model+encode) p50 {p50_job:5.2f}s, latency/job {pct(values, 0.5) / p50_job:4.1f}x"
        )
        RESULTS.append(
            {
                "setup": setup.name,
                "kind": kind,
                "studies": len(values),
                "latency_minus_quiet_p50_s": round(pct(values, 0.5), 2),
                "latency_minus_quiet_p95_s": round(pct(values, 0.95), 2),
                "model_p50_s": round(statistics.median(infer), 3),
                "job_p50_s": round(p50_job, 3),
            }
        )


def throughput(setup: Setup, studies: list[list[Path]], workers: int) -> None:
    import threading

    uids = [study_uid(f) for f in studies]
    t0 = time.monotonic()
    groups = [studies[i::4] for i in range(4)]  # 4 concurrent associations, as a busy PACS would
    threads = [threading.Thread(target=lambda g=g: [send(f, setup.port) for f in g]) for g in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = wait_sr(setup.orthanc, uids)
    elapsed = max(done.values()) - t0
    print(
        f"{setup.name:10s} throughput {len(uids)} CXR studies, {workers} worker process(es): "
        f"{elapsed:6.1f}s → {60 * len(uids) / elapsed:5.1f} studies/min"
    )
    RESULTS.append(
        {
            "setup": setup.name,
            "throughput_studies": len(uids),
            "workers": workers,
            "studies_per_min": 60 * len(uids) / elapsed,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setup", default="both", choices=["embedded", "production", "both"])
    ap.add_argument("--cxr", type=int, default=20)
    ap.add_argument("--ct", type=int, default=20)
    ap.add_argument("--throughput", type=int, default=20)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "e2e.json")
    args = ap.parse_args()
    setups = ["embedded", "production"] if args.setup == "both" else [args.setup]
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        root = Path(tmp)
        data = {
            "cxr": make_studies(root / "data", "cxr", args.cxr, 1000),
            "ct": make_studies(root / "data", "ct", args.ct, 2000),
        }
        print(f"# {os.cpu_count()} CPUs; quiet period {QUIET_S}s subtracted; CPU inference (onnxruntime)")
        for name in setups:
            for workers in (1, 2):
                orthanc = Orthanc(root / f"orthanc-{name}-{workers}").start()
                setup = Setup(name, root / f"{name}-{workers}", orthanc)
                try:
                    setup.start(workers)
                    if workers == 1:
                        latency(setup, data)
                    if args.throughput:
                        batch = make_studies(
                            root / f"tp-{name}-{workers}", "cxr", args.throughput, 4000 + 100 * workers
                        )
                        throughput(setup, batch, workers)
                finally:
                    setup.stop()
                    orthanc.stop()
    import json

    from dicom_agent.inference.manifest import load_bundle

    bundle = load_bundle(REPO / "models" / "bundled", verify=False).manifest
    meta = {"cpus": os.cpu_count(), "quiet_s": QUIET_S, "bundle": f"{bundle.name} {bundle.version}"}
    args.out.write_text(json.dumps({"meta": meta, "results": RESULTS}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
