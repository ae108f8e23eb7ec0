"""The numbered codes of GB/T 26875.3-2011 application data: type flags, system and part types, status and
operation bits, analog quantities. Values and where they were checked are in ``docs/uitd.md``."""

from __future__ import annotations

from enum import IntEnum, IntFlag

__all__ = [
    "ANALOG_SCALES",
    "AnalogType",
    "PartFlag",
    "SystemFlag",
    "SystemOperationFlag",
    "SystemType",
    "UitdFlag",
    "UitdOperationFlag",
    "UnitType",
]


class UnitType(IntEnum):
    """Type flag of the application data unit (GB/T 26875.3-2011 table 3)."""

    SYSTEM_STATE = 1
    PART_STATUS = 2
    PART_ANALOG = 3
    SYSTEM_OPERATION = 4
    SYSTEM_SOFTWARE_VERSION = 5
    SYSTEM_CONFIG = 6
    PART_CONFIG = 7
    SYSTEM_TIME = 8
    UITD_STATUS = 21
    UITD_OPERATION = 24
    UITD_SOFTWARE_VERSION = 25
    UITD_CONFIG = 26
    UITD_TIME = 28
    READ_SYSTEM_STATE = 61
    READ_PART_STATUS = 62
    READ_PART_ANALOG = 63
    READ_SYSTEM_OPERATIONS = 64
    READ_SYSTEM_SOFTWARE_VERSION = 65
    READ_SYSTEM_CONFIG = 66
    READ_PART_CONFIG = 67
    READ_SYSTEM_TIME = 68
    READ_UITD_STATUS = 81
    READ_UITD_OPERATIONS = 84
    READ_UITD_SOFTWARE_VERSION = 85
    READ_UITD_CONFIG = 86
    READ_UITD_TIME = 88
    INIT_UITD = 89
    SYNC_UITD_TIME = 90
    INSPECT = 91


class SystemType(IntEnum):
    """Building fire-protection system type (8.2.1.1). Values 128-255 are user-defined; others reserved."""

    GENERAL = 0
    FIRE_ALARM = 1
    LINKAGE_CONTROLLER = 10
    HYDRANT = 11
    SPRINKLER = 12
    GAS_EXTINGUISHING = 13
    WATER_SPRAY_PUMP = 14
    WATER_SPRAY_PRESSURE = 15
    FOAM = 16
    DRY_POWDER = 17
    SMOKE_CONTROL = 18
    FIRE_DOOR_SHUTTER = 19
    FIRE_ELEVATOR = 20
    EMERGENCY_BROADCAST = 21
    EMERGENCY_LIGHTING = 22
    FIRE_POWER = 23
    FIRE_TELEPHONE = 24


class SystemFlag(IntFlag):
    """System status word (8.2.1.1), 2 bytes low byte first. Bit 0 set = normal operation, clear = test.

    Each member is also a bool property of the objects carrying the word (``SystemState.fire_alarm``).
    SHIELDED = disabled; STARTED = started / opened; MANUAL clear = automatic."""

    NORMAL = 1 << 0
    FIRE_ALARM = 1 << 1
    FAULT = 1 << 2
    SHIELDED = 1 << 3
    SUPERVISORY = 1 << 4
    STARTED = 1 << 5
    FEEDBACK = 1 << 6
    DELAY = 1 << 7
    MAIN_POWER_FAULT = 1 << 8
    BACKUP_POWER_FAULT = 1 << 9
    BUS_FAULT = 1 << 10
    MANUAL = 1 << 11
    CONFIG_CHANGED = 1 << 12
    RESET = 1 << 13


class PartFlag(IntFlag):
    """Part status word (8.2.1.2), 2 bytes low byte first; bits 9-15 reserved. Bit 0 clear = test state.
    Each member is also a bool property of ``PartStatus`` (``.power_fault``)."""

    NORMAL = 1 << 0
    FIRE_ALARM = 1 << 1
    FAULT = 1 << 2
    SHIELDED = 1 << 3
    SUPERVISORY = 1 << 4
    STARTED = 1 << 5
    FEEDBACK = 1 << 6
    DELAY = 1 << 7
    POWER_FAULT = 1 << 8


class SystemOperationFlag(IntFlag):
    """Operation flags of a building fire-protection system (8.2.1.4)."""

    RESET = 1 << 0
    SILENCE = 1 << 1
    MANUAL_ALARM = 1 << 2
    ALARM_CLEARED = 1 << 3
    SELF_TEST = 1 << 4
    ACKNOWLEDGE = 1 << 5
    TEST = 1 << 6


class UitdFlag(IntFlag):
    """Running state of the UITD itself (8.2.1.8), 1 byte. Bit 0 set = normal monitoring, clear = test.
    Each member is also a bool property of ``UitdStatus`` (``.channel_fault``)."""

    NORMAL = 1 << 0
    FIRE_ALARM = 1 << 1
    FAULT = 1 << 2
    MAIN_POWER_FAULT = 1 << 3
    BACKUP_POWER_FAULT = 1 << 4
    CHANNEL_FAULT = 1 << 5  # the communication channel to the monitoring centre
    LINE_FAULT = 1 << 6  # the line to the monitored fire alarm panel


class UitdOperationFlag(IntFlag):
    """Operation flags of the UITD (8.2.1.9); bit 5 is the reply to an inspection (查岗应答)."""

    RESET = 1 << 0
    SILENCE = 1 << 1
    MANUAL_ALARM = 1 << 2
    ALARM_CLEARED = 1 << 3
    SELF_TEST = 1 << 4
    INSPECTION_REPLY = 1 << 5
    TEST = 1 << 6


class AnalogType(IntEnum):
    """Analog quantity type (8.2.1.3) with its unit and scale in :data:`ANALOG_SCALES`."""

    UNUSED = 0
    EVENT_COUNT = 1
    HEIGHT = 2
    TEMPERATURE = 3
    PRESSURE_MPA = 4
    PRESSURE_KPA = 5
    GAS_CONCENTRATION = 6
    TIME = 7
    VOLTAGE = 8
    CURRENT = 9
    FLOW = 10
    AIR_VOLUME = 11
    WIND_SPEED = 12


#: Analog type -> (unit, value of one count). Source: the 8.2.1.3 table as transcribed in docs/uitd.md.
ANALOG_SCALES: dict[int, tuple[str, float]] = {
    AnalogType.EVENT_COUNT: ("count", 1.0),
    AnalogType.HEIGHT: ("m", 0.01),
    AnalogType.TEMPERATURE: ("degC", 0.1),
    AnalogType.PRESSURE_MPA: ("MPa", 0.1),
    AnalogType.PRESSURE_KPA: ("kPa", 0.1),
    AnalogType.GAS_CONCENTRATION: ("%LEL", 0.1),
    AnalogType.TIME: ("s", 1.0),
    AnalogType.VOLTAGE: ("V", 0.1),
    AnalogType.CURRENT: ("A", 0.1),
    AnalogType.FLOW: ("L/s", 0.1),
    AnalogType.AIR_VOLUME: ("m3/min", 0.1),
    AnalogType.WIND_SPEED: ("m/s", 1.0),
}
