"""The ``ALLOWED_PEERS`` allow-list: calling AE titles, optionally bound to a host (``AET`` or ``AET@host``).

Checked at association time (PS3.8 7.1.1.9): an unknown calling AE gets A-ASSOCIATE-RJ
"rejected-permanent, service-user, calling-AE-title-not-recognized".
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeerPolicy:
    any_host: frozenset[str] = frozenset()  # AE titles allowed from anywhere
    by_host: dict[str, frozenset[str]] = field(default_factory=dict)  # IP address -> AE titles

    @property
    def restricted(self) -> bool:
        return bool(self.any_host or self.by_host)

    @classmethod
    def parse(cls, entries: list[str]) -> PeerPolicy:
        """``["PACS", "MODALITY@10.0.0.5", "CT1@ct1.hospital"]``; host names are resolved once, at start."""
        any_host: set[str] = set()
        by_host: dict[str, set[str]] = {}
        for entry in entries:
            aet, _, host = entry.strip().partition("@")
            aet = aet.strip()
            if not aet or len(aet) > 16:
                raise ValueError(f"allowed peer {entry!r}: AE title must be 1-16 characters")
            if not host:
                any_host.add(aet)
                continue
            for address in _resolve(host.strip().strip("[]")):
                by_host.setdefault(address, set()).add(aet)
        return cls(frozenset(any_host), {h: frozenset(a) for h, a in by_host.items()})

    def allows(self, aet: str, address: str | None) -> bool:
        if not self.restricted:
            return True
        aet = aet.strip()
        return aet in self.any_host or (address is not None and aet in self.by_host.get(address, frozenset()))

    def titles_for(self, address: str | None) -> list[str]:
        """The AE titles a peer at ``address`` may use."""
        titles = set(self.any_host)
        if address is not None:
            titles |= self.by_host.get(address, frozenset())
        return sorted(titles)


def _resolve(host: str) -> set[str]:
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)} | {host}
    except OSError:
        log.warning("allowed peer host %r does not resolve; only an exact address match will pass", host)
        return {host}
