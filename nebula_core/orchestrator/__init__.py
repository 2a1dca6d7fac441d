"""The orchestrator: placement and lifecycle commands, node liveness, reconciliation."""
