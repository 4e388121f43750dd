"""Where results go and in which output profile: ``AET@host:port`` or ``AET@host:port?profile=sr-only``.

The profile rides on the destination string so that the existing ``DESTINATIONS`` setting (comma separated)
carries it; ``EXPORT_DEFAULT_PROFILE`` applies otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dicom_agent.encode.study import PROFILES
from dicom_agent.export.scu import Peer

DEFAULT_PROFILE = "full"


@dataclass(frozen=True)
class Destination:
    peer: Peer
    profile: str = DEFAULT_PROFILE

    @classmethod
    def parse(cls, text: str, default_profile: str = DEFAULT_PROFILE) -> Destination:
        address, _, query = text.strip().partition("?")
        options = dict(part.partition("=")[::2] for part in query.split("&") if part)  # '+' stays literal
        unknown = set(options) - {"profile"}
        if unknown:
            raise ValueError(f"destination {text!r}: unknown option(s) {', '.join(sorted(unknown))}")
        profile = options.get("profile", default_profile).strip()
        if profile not in PROFILES:
            raise ValueError(f"destination {text!r}: profile must be one of {', '.join(PROFILES)}")
        return cls(Peer.parse(address), profile)

    @property
    def address(self) -> str:
        """What the outbox row stores: ``AET@host:port`` (the profile decided which objects got a row)."""
        return str(self.peer)


def configured_destinations(settings: Any) -> list[Destination]:
    """``settings.destinations`` parsed; invalid entries raise (fail at start, not at first send)."""
    default = settings.export_default_profile
    return [Destination.parse(text, default) for text in settings.destinations]
