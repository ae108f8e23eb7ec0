"""A cheaper MQTT 5 ``Properties`` object for the PUBLISH packets paho-mqtt receives.

paho-mqtt 2.x decodes every incoming PUBLISH with ``_packet.decode_publish``, which builds a fresh
``Properties(PacketTypes.PUBLISH)``: its ``__init__`` rebuilds two 27-entry tables (calling ``list.index`` for every
entry), and ``unpack`` then clears all 27 possible attributes with ``hasattr`` before reading a property length that
is almost always zero: the largest single item left in the gateway's MQTT path (docs/performance.md).

:class:`PublishProperties` shares the tables of one template instance (paho reads them, never writes them) and,
for a fresh object and an empty property block, skips the clear.  Anything else goes through paho's own ``unpack``.
The result is an instance of paho's ``Properties`` with the same attributes; ``tests/test_paho_speedups.py`` checks
it against paho's own decoding, properties included.

:func:`install` swaps it into ``paho.mqtt._packet`` only when that module looks the way this was written for; with
another paho layout it does nothing and says so in the log, and paho works as shipped.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger("firegrid.mqtt")

_TEMPLATE = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho's Properties is unannotated
_OWN = frozenset(("packetType", "types", "names", "properties"))


class PublishProperties(Properties):
    def __init__(self, packetType: int) -> None:
        # Straight into __dict__: Properties.__setattr__ would route each through its name checks.
        own = self.__dict__
        own["packetType"] = packetType
        own["types"] = _TEMPLATE.types
        own["names"] = _TEMPLATE.names
        own["properties"] = _TEMPLATE.properties

    def unpack(self, buffer: bytes | bytearray) -> tuple[Properties, int]:
        if buffer[:1] == b"\x00" and self.__dict__.keys() <= _OWN:
            return self, 1  # no properties, nothing set before: what paho's unpack returns, without its clear()
        result: tuple[Properties, int] = super().unpack(buffer)  # type: ignore[no-untyped-call]  # as above
        return result


def install() -> bool:
    """Use :class:`PublishProperties` for incoming PUBLISH packets; True when installed."""
    packet: ModuleType | None
    try:
        packet = importlib.import_module("paho.mqtt._packet")  # private: another paho-mqtt may not have it
    except ImportError:
        packet = None
    target = getattr(packet, "Properties", None)
    if target is PublishProperties:
        return True
    if packet is None or target is not Properties or not hasattr(packet, "decode_publish"):
        log.info("paho-mqtt layout not recognised: PUBLISH properties decoded by paho as shipped")
        return False
    setattr(packet, "Properties", PublishProperties)  # noqa: B010 - the module is known only at run time
    return True
