"""The rules engine: a pure core that turns readings, events and a clock into alert transitions.

Nothing in this package performs I/O or reads the wall clock; see ``docs/architecture.md``.
"""
