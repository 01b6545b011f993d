"""The logging shim: ``ActivityRecorder`` records what users do, the Flask extension records it automatically."""

from exporter.shim.recorder import DROP_REASONS, ActivityRecorder
from exporter.shim.useragent import DEVICE_TYPES, device_type

__all__ = ["ActivityRecorder", "DROP_REASONS", "DEVICE_TYPES", "device_type"]
