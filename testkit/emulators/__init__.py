"""Local servers that stand in for the outside world in tests and benches: SMS providers that verify each request
exactly as the provider documents it (signature included), and a Standard Webhooks receiver.

They deliberately do NOT import ``alerts``: each verifies requests from the provider's documentation on its own, so a
signing bug in firegrid cannot be mirrored by the same bug here.
"""
