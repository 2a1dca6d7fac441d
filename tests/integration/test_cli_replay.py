"""`nebula replay` run as an operator runs it, when NATS is not there."""

from __future__ import annotations

from nebula_core.allinone.embedded import free_port
from tests.integration.test_init_and_up import nebula


def test_replay_without_nats_is_one_clear_line_at_once(pg_dsn: str) -> None:
    url = f"nats://127.0.0.1:{free_port()}"

    result = nebula("replay", env={"NEBULA_NATS_URL": url, "NEBULA_PG_DSN": pg_dsn}, timeout=30)

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nebula: cannot reach NATS at {url}"), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
