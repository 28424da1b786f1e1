"""IIF peer servers provisioned through the API (the ``iif_peers`` table).

:func:`load_iif_peers` reads the enabled rows as :class:`~switchd.iif.server.IifPeer`
values, ready for ``PeerTable.replace(config_peers + load_iif_peers(conn))``. A
reload must never fail because of one bad row (the table would then keep the
old peers forever), so rows that cannot make a peer, and second spellings of
an address already listed, are skipped and logged instead.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.engine import Connection
from twisted.logger import Logger

from ..store.models import iif_peers
from .server import IifPeer, PeerConfigError

log = Logger()


def _address(host: str) -> str:
    """One spelling per address, as the peer table compares them."""
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def load_iif_peers(conn: Connection, taken: Iterable[IifPeer] = ()) -> list[IifPeer]:
    """The enabled peers of the ``iif_peers`` table, oldest first; bad rows are skipped (and logged).

    ``taken``: peers served already (those of ``[iif] peers``); a row for the
    same address and port is skipped, so the two lists can go in one table.
    """
    peers: list[IifPeer] = []
    seen: set[tuple[str, int]] = {(_address(p.host), p.port) for p in taken}
    rows = conn.execute(
        select(iif_peers.c.id, iif_peers.c.host, iif_peers.c.port, iif_peers.c.service_id,
               iif_peers.c.default_caller, iif_peers.c.external_line_mode)
        .where(iif_peers.c.enabled.is_(True))
        .order_by(iif_peers.c.id)
    )
    for row in rows:
        try:
            key = (_address(row.host), row.port)
            peer = IifPeer(row.host, row.port, row.service_id, row.default_caller or None, row.external_line_mode)
        except (ValueError, PeerConfigError) as error:  # PeerConfigError is a ValueError; named for the reader
            log.warn("IIF peer {id} skipped: {reason}", id=row.id, reason=str(error))  # noqa: G010
            continue
        if key in seen:
            log.warn(  # noqa: G010 (twisted.logger.Logger has warn, not warning)
                "IIF peer {id} skipped: {host} port {port} is served already ([iif] peers or an older row)",
                id=row.id, host=key[0], port=key[1])
            continue
        seen.add(key)
        peers.append(peer)
    return peers
