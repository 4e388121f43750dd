"""The node's roles: ``serve`` (all on one machine, embedded defaults), ``scp``, ``worker``, ``exporter``, ``web``."""

from __future__ import annotations

from typing import Annotated

import typer

from dicom_agent.config import Settings, get_settings


def _settings() -> Settings:
    from dicom_agent.logging import setup_logging

    settings = get_settings()
    setup_logging(settings.log_level, settings.log_json)
    return settings


def serve() -> None:
    """Run SCP, worker, exporter and web app together on embedded defaults."""
    from dicom_agent.serve import serve_all

    serve_all(_settings())


def scp() -> None:
    """Run the C-STORE SCP only (with the study sweeper, which routes complete studies to the workers)."""
    from dicom_agent.receive.server import serve_forever
    from dicom_agent.tasks.enqueue import install

    settings = _settings()
    install(settings)  # validates the routing rules and registers the completion hook
    serve_forever(settings)


def worker(
    queues: Annotated[str, typer.Option(help="comma-separated queues: gpu, cpu, export")] = "cpu,export",
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N")] = None,
    concurrency: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Run a Celery worker that keeps the model loaded."""
    from dicom_agent.tasks.worker import run_worker

    run_worker(_settings(), queues=queues.split(","), device=device, concurrency=concurrency)


def exporter() -> None:
    """Run the export outbox sender."""
    from dicom_agent.export.runner import run_exporter

    run_exporter(_settings())


def web() -> None:
    """Run the radiologist worklist web app."""
    from dicom_agent.web.app import run_web

    run_web(_settings())


def register(app: typer.Typer) -> None:
    for command in (serve, scp, worker, exporter, web):
        app.command()(command)
