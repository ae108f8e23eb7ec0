"""What the tests and the benchmarks share: real Mosquitto and InfluxDB servers on free loopback ports
(:mod:`testkit.services`), ``firegrid run`` as a process and a QoS 1 publisher (:mod:`testkit.gateway`), servers
that misbehave on purpose (:mod:`testkit.faults`), and local stand-ins for SMS providers and webhook receivers
(:mod:`testkit.emulators`).

Not part of the installed package: the tests and ``bench/`` run from the repository root, which puts it on the path.
"""
