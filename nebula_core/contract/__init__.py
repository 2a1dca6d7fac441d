"""The wire contract: every message Nebula puts on NATS, and the subjects it goes to.

This package is the one source of truth for integrators. `schemas/` is generated
from it (`nebula schemas --write`) and a test fails when the two drift apart.
"""
