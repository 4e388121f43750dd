"""Worklist page time with 10,000 studies in the database (issue 6: < 300 ms server time), SQLite and PostgreSQL.

Fills a fresh database with 10,000 studies that have AI results (jobs, 1-4 findings each, ~5 % critical,
~30 % already reviewed), then times the full page (``GET /`` through the ASGI app in-process: routing, auth,
query, template) and the bare worklist query for several filter combinations, and prints EXPLAIN (ANALYZE) of
the PostgreSQL query plan. The bare query is the peer the page is compared with (ratio page/query), and the
300 ms target is printed beside each median.

    python bench/worklist.py [--studies 10000] [--rounds 15] [--pg postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from dicom_agent.config import get_settings
from dicom_agent.db.migrate import upgrade
from dicom_agent.db.orm import Finding, Job, Review, Study, User
from dicom_agent.db.session import engine_for
from dicom_agent.web.schemas import WorklistFilters
from dicom_agent.web.security import hash_password
from dicom_agent.web.worklist_query import worklist_page, worklist_statement

TARGET_MS = 300.0
CASES = {
    "default (open, page 1)": "/",
    "all states": "/?state=all",
    "modality CT": "/?modality=CT&state=all",
    "text search": "/?q=wang&state=all",
    "date range": "/?date_from=2026-02-01&date_to=2026-02-28&state=all",
    "page 100": "/?state=all&page=100",
}
LABELS = [
    ("nodule", "27925004", "Nodule", "结节", False),
    ("mass", "4147007", "Mass", "肿块", False),
    ("pleural_effusion", "60046008", "Pleural effusion", "胸腔积液", False),
    ("pneumothorax", "36118008", "Pneumothorax", "气胸", True),
    ("cardiomegaly", "8186001", "Cardiomegaly", "心影增大", False),
]
NAMES = ["WANG^WEI", "LI^NA", "ZHANG^LEI", "SMITH^ANNA", "GARCIA^MARCO", "CHEN^JUN", "MULLER^PETER", "LIU^YAN"]


def fill(url: str, n: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    engine = engine_for(url)
    now = datetime.now(UTC)
    studies, jobs, findings, reviews = [], [], [], []
    for i in range(1, n + 1):
        modality = rng.choice(["DX", "DX", "CR", "CT", "CT", "PT"])
        priority = rng.choices(["routine", "urgent", "stat"], [85, 10, 5])[0]
        studies.append(
            {
                "id": i,
                "study_instance_uid": f"2.25.{uuid.UUID(int=rng.getrandbits(128)).int}",
                "patient_id": f"PID{i:07d}",
                "patient_name": rng.choice(NAMES),
                "accession_number": f"ACC{i:08d}",
                "study_date": (now - timedelta(days=rng.randint(0, 90))).strftime("%Y%m%d"),
                "study_description": {"DX": "Chest PA", "CR": "Chest AP", "CT": "CT chest", "PT": "FDG PET/CT"}[
                    modality
                ],
                "modalities": modality,
                "state": rng.choices(
                    ["results_ready", "exported", "signed", "inferring", "failed"], [60, 20, 12, 5, 3]
                )[0],
                "priority": priority,
                "priority_rank": {"stat": 10, "urgent": 30, "routine": 50}[priority],
                "revision": 0,
                "needs_rerun": False,
                "instance_count": 1,
                "first_received_at": now - timedelta(minutes=rng.randint(1, 60 * 24 * 30)),
                "last_received_at": now,
                "updated_at": now,
            }
        )
        jobs.append(
            {
                "id": i,
                "study_id": i,
                "revision": 0,
                "model_name": "bench",
                "task": "infer_study",
                "queue": "cpu",
                "priority": priority,
                "output_profile": "full",
                "state": "succeeded",
                "attempts": 1,
                "created_at": now,
            }
        )
        for label, code, en, zh, critical in rng.sample(LABELS, rng.randint(1, 4)):
            is_critical = critical and rng.random() < 0.5
            findings.append(
                {
                    "job_id": i,
                    "study_id": i,
                    "label": label,
                    "code_value": code,
                    "coding_scheme": "SCT",
                    "code_meaning": en,
                    "name_en": en,
                    "name_zh": zh,
                    "probability": round(rng.random(), 3),
                    "present": rng.random() < 0.6 or is_critical,
                    "critical": is_critical,
                }
            )
        if rng.random() < 0.3:
            reviews.append(
                {
                    "study_id": i,
                    "job_id": i,
                    "state": rng.choice(["in_review", "signed", "rejected"]),
                    "created_at": now,
                    "updated_at": now,
                }
            )
    with engine.begin() as conn:
        for table, rows in ((Study, studies), (Job, jobs), (Finding, findings), (Review, reviews)):
            for k in range(0, len(rows), 2000):
                conn.execute(sa.insert(table.__table__), rows[k : k + 2000])
    with Session(engine) as db:
        db.add(User(username="bench", password_hash=hash_password("bench-password"), role="radiologist"))
        db.commit()
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
    print(f"  filled: {len(studies)} studies, {len(findings)} findings, {len(reviews)} reviews")


def timed(fn, rounds: int) -> list[float]:  # type: ignore[no-untyped-def]
    fn()  # warm-up (template compile, connection pool, caches)
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def run(url: str, rounds: int) -> None:
    from dicom_agent.web.app import create_app

    get_settings.cache_clear()
    settings = get_settings().model_copy(update={"database_url": url, "secret_key": "bench-" + "k" * 40})
    app = create_app(settings)
    engine = engine_for(url)
    with TestClient(app) as client:
        page = client.get("/login").text
        token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        r = client.post("/login", data={"username": "bench", "password": "bench-password", "csrf_token": token})
        assert r.status_code == 200, r.status_code
        print(f"  {'case':26} {'page med':>9} {'p95':>7} {'query med':>10} {'page/query':>11} {'vs 300 ms':>10}")
        for name, path in CASES.items():
            resp = client.get(path)
            assert resp.status_code == 200 and "worklist-table" in resp.text, (path, resp.status_code)
            page_ms = timed(lambda p=path: client.get(p), rounds)
            query = dict((k, v) for k, v in (part.split("=", 1) for part in path.partition("?")[2].split("&") if part))
            filters = WorklistFilters(**query)  # type: ignore[arg-type]

            def bare(f: WorklistFilters = filters) -> None:
                with Session(engine) as db:
                    worklist_page(db, f)

            query_ms = timed(bare, rounds)
            pm, qm = statistics.median(page_ms), statistics.median(query_ms)
            p95 = sorted(page_ms)[max(0, int(len(page_ms) * 0.95) - 1)]
            print(f"  {name:26} {pm:8.1f}ms {p95:6.1f}ms {qm:9.1f}ms {pm / qm:10.2f}x {pm / TARGET_MS:9.2f}x")
    if engine.dialect.name == "postgresql":
        stmt = worklist_statement(WorklistFilters())
        sql = stmt.compile(engine, compile_kwargs={"literal_binds": True})
        with engine.connect() as conn:
            plan = conn.execute(sa.text(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")).scalars().all()
        print("  EXPLAIN (ANALYZE, BUFFERS) of the default worklist query:")
        for line in plan:
            print("    " + line)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument(
        "--pg", default=os.environ.get("DICOM_AGENT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DICOM_AGENT_STORAGE_DIR"] = str(Path(tmp) / "storage")
        url = f"sqlite:///{tmp}/bench.sqlite"
        print(f"SQLite ({args.studies} studies)")
        upgrade(url)
        fill(url, args.studies)
        run(url, args.rounds)

        schema = f"bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(args.pg.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            with admin.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        except sa.exc.OperationalError as exc:
            print(f"PostgreSQL not reachable ({exc.__class__.__name__}); skipped")
            return
        try:
            sep = "&" if "?" in args.pg else "?"
            pg = f"{args.pg}{sep}options=-csearch_path%3D{schema}"
            print(f"PostgreSQL ({args.studies} studies)")
            upgrade(pg)
            fill(pg, args.studies)
            run(pg, args.rounds)
        finally:
            engine_for.cache_clear()
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


if __name__ == "__main__":
    main()
