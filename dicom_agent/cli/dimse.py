"""``send`` and ``echo``: a small DICOM client for operators and demos."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dicom_agent.cli.common import fail, out

Host = Annotated[str, typer.Option(help="node host")]
Port = Annotated[int, typer.Option(help="node port")]


def send(
    paths: Annotated[list[Path], typer.Argument(help="files or folders to send")],
    host: Host = "127.0.0.1",
    port: Port = 11112,
    aet: Annotated[str, typer.Option(help="our calling AE title")] = "DICOM_AGENT_SCU",
    called_aet: Annotated[str | None, typer.Option(help="the node's AE title")] = None,
) -> None:
    """C-STORE files or folders to a node."""
    from dicom_agent.config import get_settings
    from dicom_agent.errors import TransientExportError
    from dicom_agent.export.scu import Peer, iter_dicom_files, send_files

    peer = Peer(called_aet or get_settings().ae_title, host, port)
    files = list(iter_dicom_files(paths))
    if not files:
        fail("no files to send")
    try:
        results = send_files(files, peer, calling_aet=aet)
    except TransientExportError as exc:
        fail(str(exc))
    failed = [r for r in results if not r.ok]
    for r in failed:
        status = f"0x{r.status:04X}" if r.status is not None else "-"
        out(f"FAILED {r.path} status={status} {r.error or ''}".rstrip())
    out(f"sent {len(results) - len(failed)} of {len(results)} files to {peer}")
    if failed:
        raise typer.Exit(1)


def echo(
    host: Host = "127.0.0.1",
    port: Port = 11112,
    aet: Annotated[str, typer.Option(help="our calling AE title")] = "DICOM_AGENT_SCU",
    called_aet: Annotated[str | None, typer.Option(help="the node's AE title")] = None,
) -> None:
    """C-ECHO a node."""
    from dicom_agent.config import get_settings
    from dicom_agent.errors import TransientExportError
    from dicom_agent.export.scu import Peer
    from dicom_agent.export.scu import echo as c_echo

    peer = Peer(called_aet or get_settings().ae_title, host, port)
    try:
        status = c_echo(peer, calling_aet=aet)
    except TransientExportError as exc:
        fail(str(exc))
    if status != 0:
        fail(f"C-ECHO to {peer} returned status 0x{status:04X}")
    out(f"C-ECHO to {peer}: success")
