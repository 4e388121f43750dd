"""``routes test PATH`` and ``routes check``: explain which routing rule a study would match, and why."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dicom_agent.cli.common import fail, out

if TYPE_CHECKING:
    from dicom_agent.routing.rules import RuleSet

app = typer.Typer(help="Routing rules.", no_args_is_help=True)

RulesOpt = Annotated[Path | None, typer.Option("--rules", help="routing file (default: ROUTING_FILE or bundled)")]


def _rules(path: Path | None) -> RuleSet:
    from dicom_agent.config import get_settings
    from dicom_agent.errors import RoutingError
    from dicom_agent.routing.rules import load_rules

    try:
        return load_rules(path or get_settings().routing_file)
    except RoutingError as exc:
        fail(str(exc))


@app.command("test")
def test_routes(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or study folders")],
    rules: RulesOpt = None,
    calling_ae: Annotated[str | None, typer.Option(help="pretend this calling AE sent the study")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show every rule tried")] = False,
) -> None:
    """Explain which rule each study under PATH would match, which series go to the model, and why."""
    from dicom_agent.routing.engine import decide
    from dicom_agent.routing.facts import facts_from_files

    ruleset = _rules(rules)
    missing = [p for p in paths if not p.exists()]
    if missing:
        fail(f"no such file or folder: {missing[0]}")
    studies = facts_from_files(paths, calling_ae)
    if not studies:
        fail("no readable DICOM files with a StudyInstanceUID")
    out(f"rules: {ruleset.source}")
    for facts in studies:
        d = decide(ruleset, facts)
        mods = ",".join(sorted(facts.modalities))
        out(f"study {facts.study_instance_uid} [{mods}, {len(facts.series)} series]")
        if d.action == "run":
            dest = "DESTINATIONS setting" if d.destinations is None else (", ".join(d.destinations) or "none")
            out(f"  → rule {d.rule!r}: run model {d.model} tasks {','.join(d.tasks)}")
            out(f"    priority {d.priority}, queue {d.queue}, profile {d.profile}, destinations: {dest}")
            out(f"    series: {', '.join(d.series_uids)}")
        else:
            out(f"  → ignored ({'rule ' + repr(d.rule) if d.rule else 'no rule'}): nothing will be sent")
        out(f"    why: {d.reason}")
        for line in d.trace if verbose else ():
            out(f"    · {line}")


@app.command("check")
def check_routes(rules: RulesOpt = None) -> None:
    """Validate a routing file (the same check every role runs at start)."""
    ruleset = _rules(rules)
    out(f"{ruleset.source}: {len(ruleset.rules)} rules OK ({', '.join(r.name for r in ruleset.rules)})")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="routes")
