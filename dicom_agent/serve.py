"""``dicom-agent serve``: every role on one machine with embedded defaults, no servers to install.

In this process: migrations, the routing rules check, the SCP with its study sweeper (and the completion
hook that routes and queues), the exporter loop, the metrics endpoint. In child processes (supervised, restarted
if they die): one Celery worker on all queues (the model stays loaded there), and the web app when present.
SQLite holds the index, kombu's SQLAlchemy transport on SQLite is the broker. SIGINT/SIGTERM stop everything.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

from dicom_agent.config import Settings
from dicom_agent.errors import RoutingError

log = logging.getLogger(__name__)


@dataclass
class Child:
    """A supervised role in its own process (``python -m dicom_agent <args>``)."""

    name: str
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "dicom_agent", *self.args], env=os.environ.copy())
        log.info("started %s (pid %s)", self.name, self.proc.pid)

    def check(self, stopping: bool) -> None:
        """Restarts a child that died on its own (at most 5 times a minute)."""
        if stopping or self.proc is None or self.proc.poll() is None:
            return
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < 60]
        if len(self.restarts) >= 5:
            return
        log.error("%s exited with %s; restarting", self.name, self.proc.returncode)
        self.restarts.append(now)
        self.start()

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
            self.proc.kill()
            self.proc.wait(5)


def web_available() -> bool:
    return importlib.util.find_spec("dicom_agent.web.app") is not None


def announce(settings: Settings, scp_port: int, web: bool) -> None:
    """Where the node listens: for the user who just typed ``make run``."""
    host = settings.dicom_host
    lines = [
        "dicom_agent is running (embedded mode)",
        f"  DICOM   AE title {settings.ae_title} on {host}:{scp_port}",
        f"  send    dicom-agent send samples/ --port {scp_port}",
        f"  web     http://{settings.web_host}:{settings.web_port}/" if web else "  web     (not installed)",
        f"  results to {', '.join(settings.destinations) or '(no DESTINATIONS: kept on this node)'}",
        "  studies dicom-agent studies",
        "Ctrl-C stops.",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    log.info("serving: AE %s on %s:%s, web %s", settings.ae_title, host, scp_port, web)


def serve_all(settings: Settings) -> None:
    """Runs until SIGINT or SIGTERM, then stops every role cleanly."""
    from dicom_agent import metrics
    from dicom_agent.db.migrate import upgrade
    from dicom_agent.export.runner import run_exporter
    from dicom_agent.receive.server import start_server
    from dicom_agent.tasks.app import configure
    from dicom_agent.tasks.enqueue import install

    upgrade(settings.database_url)
    try:
        install(settings)  # validates the routing rules, registers the completion hook
    except RoutingError as exc:
        sys.stderr.write(f"dicom-agent: {exc}\n")
        raise SystemExit(2) from exc
    configure(settings)
    metrics.start_metrics_server(settings.metrics_port)

    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)

    children = [Child("worker", ["worker", "--queues", "gpu,cpu,export", "--concurrency", "1"])]
    web = web_available()
    if web:
        children.append(Child("web", ["web"]))
    else:
        log.info("dicom_agent.web is not installed; serving without the web app")
    for child in children:
        child.start()

    scp = start_server(settings, sweeper=True)
    exporter = threading.Thread(target=run_exporter, args=(settings, stop), name="exporter", daemon=True)
    exporter.start()
    announce(settings, scp.port, web)
    try:
        while not stop.wait(1.0):
            for child in children:
                child.check(stop.is_set())
    finally:
        log.info("stopping the SCP")
        scp.shutdown()
        for child in children:
            child.stop()
        from dicom_agent.export.runner import wake

        wake()
        exporter.join(15)
        log.info("stopped")
