"""A trunk's own number (external line mode): the user its SIP connection registers with."""

from __future__ import annotations

from twisted.internet.task import Clock

from switchd.sip.trunks import TrunkManager, TrunkSettings


def connection(connection_id: int, trunk_id: int, auth_type: str, user: str | None) -> TrunkSettings:
    return TrunkSettings(connection_id=connection_id, trunk_id=trunk_id, service_id=1, name=f"t{trunk_id}",
                         host="192.0.2.1", port=5060, transport="udp", auth_type=auth_type, auth_user=user,
                         auth_password="pw" if user else None, outbound_src_hardware=None, cps_limit=0, call_limit=0,
                         force_rport=False, logging=False, qualify_ms=0)


class Registered:
    state = "registered"


class Failed:
    state = "failed"


def manager(*settings: TrunkSettings) -> TrunkManager:
    trunks = TrunkManager(None, Clock(), None, None, contact_address=lambda d: ("203.0.113.1", 5060))
    trunks.settings = {s.connection_id: s for s in settings}
    return trunks


def test_the_registered_user_of_the_trunk_else_none():
    trunks = manager(connection(1, 7, "registration", "442071230001"), connection(2, 7, "registration", "442071230002"),
                     connection(3, 8, "ip", None), connection(4, 9, "digest", "user9"))
    assert trunks.line_number(7) == "442071230001"  # neither registered yet: the lowest id
    trunks.registrations = {1: Failed(), 2: Registered()}
    assert trunks.line_number(7) == "442071230002"  # a registered line first
    assert trunks.line_number(8) is None  # IP-only trunk
    assert trunks.line_number(9) is None  # credentials for challenges only: not a line that registers
    assert trunks.line_number(None) is None and trunks.line_number(42) is None
