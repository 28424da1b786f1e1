"""twistd plugin: ``twistd -n switchd -c /etc/switchd/switchd.ini``."""

from twisted.application.service import ServiceMaker

switchd = ServiceMaker(
    "switchd",
    "switchd.tap",
    "Carrier-grade telecom switch: SIP, RTP, SMPP, callback and billing",
    "switchd",
)
