"""firegrid simulators: a community of devices speaking the telemetry contract, timed fire scenarios, load
generation, recording, and deployment verification (``firegrid simulate`` / ``firegrid verify``)."""
