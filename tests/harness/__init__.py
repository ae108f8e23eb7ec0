"""Real servers for tests: Mosquitto and InfluxDB 1.x on free loopback ports, each in its own temporary directory."""
