"""End to end with real parts: Orthanc (the PACS) → node → the bundled model → SR/SEG/KOS back at Orthanc.

Embedded defaults (``dicom-agent serve``: SQLite + kombu's SQLAlchemy transport) and the production path
(PostgreSQL + RabbitMQ, separate ``scp``, ``worker`` and ``exporter`` processes); faults: a worker SIGKILLed
mid-job, broker messages lost, 20 studies over 4 concurrent associations. Every returned object goes
through dciodvfy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import TEST_PG_URL, skip_or_fail
from tests.peers import Orthanc, free_port
from tests.pipeline.nodeproc import REPO, Roles, node_env, results_at_orthanc, send_from_orthanc, wait_scp, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.orthanc, pytest.mark.timeout(600)]
RABBIT_URL = os.environ.get("DICOM_AGENT_TEST_BROKER_URL")
AET = "DICOM_AGENT"


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    from dicom_agent.cli.samples import make_samples

    root = tmp_path_factory.mktemp("samples")
    make_samples(root, ("cxr", "ct"))
    return {kind: sorted((root / kind).glob("*.dcm")) for kind in ("cxr", "ct")}


def _uid(files: list[Path]) -> str:
    from pydicom import dcmread

    return str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _validate(orthanc: Orthanc, instance_ids: list[str], tmp: Path) -> None:
    from tests.results.validators import dciodvfy

    for oid in instance_ids:
        path = tmp / f"{oid}.dcm"
        path.write_bytes(orthanc.get(f"/instances/{oid}/file"))
        report = dciodvfy(path)
        assert not report.errors, f"dciodvfy errors in {oid}:\n{report.output}"


def _db(env: dict[str, str]) -> sa.engine.Engine:
    from dicom_agent.db.session import make_engine

    return make_engine(env["DICOM_AGENT_DATABASE_URL"])


def _jobs(env: dict[str, str]) -> list[tuple[int, int, str, int]]:
    """(study id, revision, state, attempts) of every job."""
    with _db(env).connect() as conn:
        rows = conn.execute(sa.text("SELECT study_id, revision, state, attempts FROM job ORDER BY id")).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


@pytest.fixture
def roles(tmp_path: Path) -> Iterator[Roles]:
    r = Roles(tmp_path, {})
    yield r
    r.stop_all()


def _embedded_env(tmp: Path, orthanc: Orthanc, **extra: str) -> dict[str, str]:
    return node_env(
        free_port(),
        free_port(),
        orthanc,
        DICOM_AGENT_STORAGE_DIR=str(tmp / "storage"),
        DICOM_AGENT_DATABASE_URL=f"sqlite:///{tmp / 'node.db'}",
        DICOM_AGENT_BROKER_URL=f"sqla+sqlite:///{tmp / 'broker.db'}",
        **extra,
    )


@pytest.fixture
def production_env(tmp_path: Path, orthanc: Orthanc) -> Iterator[dict[str, str]]:
    """PostgreSQL (a fresh schema) + RabbitMQ (per-test queue names) from the CI's test services."""
    if not (TEST_PG_URL and RABBIT_URL):
        skip_or_fail("DICOM_AGENT_TEST_DATABASE_URL and DICOM_AGENT_TEST_BROKER_URL are needed for the production path")
    assert TEST_PG_URL is not None and RABBIT_URL is not None
    schema = f"e2e_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(TEST_PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in TEST_PG_URL else "?"
    env = node_env(
        free_port(),
        free_port(),
        orthanc,
        DICOM_AGENT_STORAGE_DIR=str(tmp_path / "storage"),
        DICOM_AGENT_DATABASE_URL=f"{TEST_PG_URL}{sep}options=-csearch_path%3D{schema}",
        DICOM_AGENT_BROKER_URL=RABBIT_URL,
        DICOM_AGENT_QUEUE_PREFIX=f"{schema}.",
        DICOM_AGENT_DEFAULT_QUEUE="cpu",
    )
    yield env
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()
    _delete_queues(env)


def _delete_queues(env: dict[str, str]) -> None:
    from kombu import Connection

    with Connection(env["DICOM_AGENT_BROKER_URL"]) as conn:
        channel = conn.default_channel
        for q in ("gpu", "cpu", "export"):
            try:
                channel.queue_delete(env["DICOM_AGENT_QUEUE_PREFIX"] + q)
            except Exception:  # already gone
                channel = conn.channel()


def _round_trip(roles: Roles, env: dict[str, str], orthanc: Orthanc, samples: dict[str, list[Path]], tmp: Path) -> None:
    port = int(env["DICOM_AGENT_DICOM_PORT"])
    wait_scp(port)
    send_from_orthanc(orthanc, samples["cxr"] + samples["ct"], AET, port)
    uids = {_uid(samples["cxr"]), _uid(samples["ct"])}
    wait_until(
        lambda: all("SR" in results_at_orthanc(orthanc).get(u, {}) for u in uids),
        timeout=420,
        what="the SR of both studies at Orthanc",
        on_timeout=roles.logs,
    )
    found = results_at_orthanc(orthanc)
    for uid in uids:
        assert len(found[uid]["SR"]) == 1 and len(found[uid].get("KO", [])) <= 1, found[uid]
        _validate(orthanc, [i for ids in found[uid].values() for i in ids], tmp)
    assert sorted(j[2] for j in _jobs(env)) == ["succeeded", "succeeded"]
    table = subprocess.run(
        [sys.executable, "-m", "dicom_agent", "studies"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert table.returncode == 0, table.stderr
    assert all(uid in table.stdout for uid in uids), table.stdout  # whole UIDs, to paste into `dicom-agent ask`
    wait_until(
        lambda: _count_states(env, "exported") == 2, timeout=60, what="both studies exported", on_timeout=roles.logs
    )


def _count_states(env: dict[str, str], state: str) -> int:
    with _db(env).connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM study WHERE state = :s"), {"s": state}).scalar() or 0)


def test_embedded_serve_round_trip_with_orthanc(
    roles: Roles, orthanc: Orthanc, samples: dict[str, list[Path]], tmp_path: Path
) -> None:
    env = _embedded_env(tmp_path, orthanc)
    roles.env = env
    roles.start("serve", "serve")
    _round_trip(roles, env, orthanc, samples, tmp_path)


def test_production_path_round_trip_with_orthanc(
    roles: Roles, orthanc: Orthanc, production_env: dict[str, str], samples: dict[str, list[Path]], tmp_path: Path
) -> None:
    roles.env = production_env
    subprocess.run(
        [sys.executable, "-m", "dicom_agent", "db", "upgrade"], cwd=REPO, env=production_env, check=True, timeout=120
    )
    roles.start("scp", "scp")
    roles.start("worker", "worker", "--queues", "cpu,export", "--device", "cpu")
    roles.start("exporter", "exporter")
    _round_trip(roles, production_env, orthanc, samples, tmp_path)


@pytest.mark.parametrize("broker", ["embedded", "rabbitmq"])
def test_worker_sigkilled_mid_job_the_study_completes_once(
    broker: str, roles: Roles, orthanc: Orthanc, samples: dict[str, list[Path]], tmp_path: Path
) -> None:
    # only the dead-process path may recover it (or RabbitMQ's redelivery), not a stale heartbeat
    env = _embedded_env(tmp_path, orthanc, DICOM_AGENT_JOB_STALE_S="600")
    if broker == "rabbitmq":
        if not RABBIT_URL:
            skip_or_fail("DICOM_AGENT_TEST_BROKER_URL unset")
        env |= {"DICOM_AGENT_BROKER_URL": str(RABBIT_URL), "DICOM_AGENT_QUEUE_PREFIX": f"k{uuid.uuid4().hex[:8]}."}
    roles.env = env
    subprocess.run([sys.executable, "-m", "dicom_agent", "db", "upgrade"], cwd=REPO, env=env, check=True, timeout=120)
    roles.start("scp", "scp")
    roles.start("worker", "worker", "--queues", "cpu,export", "--device", "cpu")
    roles.start("exporter", "exporter")
    port = int(env["DICOM_AGENT_DICOM_PORT"])
    wait_scp(port)
    try:
        send_from_orthanc(orthanc, samples["ct"], AET, port)
        wait_until(
            lambda: any(j[2] == "running" for j in _jobs(env)),
            timeout=120,
            what="the job running",
            on_timeout=roles.logs,
        )
        roles.kill("worker")  # SIGKILL to the worker and its pool process, mid-inference or mid-encoding
        assert [j[2] for j in _jobs(env)] == ["running"]
        roles.start("worker2", "worker", "--queues", "cpu,export", "--device", "cpu")
        uid = _uid(samples["ct"])
        wait_until(
            lambda: "SR" in results_at_orthanc(orthanc).get(uid, {}),
            timeout=300,
            what="the SR after the kill",
            on_timeout=roles.logs,
        )
        [(_, revision, state, attempts)] = _jobs(env)
        assert (revision, state, attempts) == (0, "succeeded", 2)
        assert len(results_at_orthanc(orthanc)[uid]["SR"]) == 1
        with _db(env).connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM result_object WHERE kind = 'sr'")).scalar() == 1
    finally:
        if broker == "rabbitmq":
            roles.stop_all()
            _delete_queues(env)


def test_broker_messages_lost_while_the_worker_is_down_no_job_is_lost(
    roles: Roles, orthanc: Orthanc, samples: dict[str, list[Path]], tmp_path: Path
) -> None:
    """The embedded broker "restarted empty": its queued messages are purged; the database re-sends them."""
    from dicom_agent.cli.samples import make_samples

    env = _embedded_env(tmp_path, orthanc)
    roles.env = env
    subprocess.run([sys.executable, "-m", "dicom_agent", "db", "upgrade"], cwd=REPO, env=env, check=True, timeout=120)
    roles.start("scp", "scp")
    roles.start("exporter", "exporter")
    port = int(env["DICOM_AGENT_DICOM_PORT"])
    wait_scp(port)
    folders = [make_samples(tmp_path / f"cxr{seed}", ("cxr",), seed=seed)[0] for seed in (11, 12, 13)]
    for folder in folders:
        send_from_orthanc(orthanc, sorted(Path(folder).glob("*.dcm")), AET, port)
    wait_until(lambda: len(_jobs(env)) == 3, timeout=60, what="3 jobs queued", on_timeout=roles.logs)
    purged = subprocess.run(
        [sys.executable, "-c", "from dicom_agent.tasks.app import configure; print(configure().control.purge())"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert purged.returncode == 0 and int(purged.stdout.strip()) == 3, purged
    roles.start("worker", "worker", "--queues", "cpu,export", "--device", "cpu")
    wait_until(
        lambda: sum("SR" in v for v in results_at_orthanc(orthanc).values()) == 3,
        timeout=240,
        what="3 SRs at Orthanc",
        on_timeout=roles.logs,
    )
    assert sorted((j[2], j[3]) for j in _jobs(env)) == [("succeeded", 1)] * 3


def test_twenty_studies_over_four_associations_complete_exactly_once(
    roles: Roles, orthanc: Orthanc, tmp_path: Path
) -> None:
    from dicom_agent.cli.samples import make_samples

    env = _embedded_env(tmp_path, orthanc)
    roles.env = env
    roles.start("serve", "serve")
    port = int(env["DICOM_AGENT_DICOM_PORT"])
    groups = [tmp_path / f"group{g}" for g in range(4)]
    for i in range(20):
        make_samples(groups[i % 4] / f"s{i}", ("cxr",), seed=100 + i)
    wait_scp(port)
    senders = [
        subprocess.Popen(
            [sys.executable, "-m", "dicom_agent", "send", *map(str, sorted(g.rglob("*.dcm"))), "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for g in groups
    ]
    for s in senders:
        out, _ = s.communicate(timeout=180)
        assert s.returncode == 0, out
    wait_until(
        lambda: sum("SR" in v for v in results_at_orthanc(orthanc).values()) == 20,
        timeout=420,
        what="20 SRs at Orthanc",
        on_timeout=roles.logs,
    )
    jobs = _jobs(env)
    assert len(jobs) == 20 and len({j[0] for j in jobs}) == 20
    assert all((j[1], j[2], j[3]) == (0, "succeeded", 1) for j in jobs), jobs
    assert all(len(v.get("SR", [])) == 1 for v in results_at_orthanc(orthanc).values())
