"""The firegrid gateway: MQTT ingest, the telemetry contract, configuration, the service runtime and its HTTP API."""

__version__ = "0.1.0"
