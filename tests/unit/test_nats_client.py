"""What NEBULA_NATS_URL may hold, and what of it may be shown."""

from __future__ import annotations

import pytest

from nebula_core.nats_client import redacted, servers


def test_a_cluster_is_listed_comma_separated() -> None:
    assert servers(" nats://a:4222, nats://b:4222 ,") == ["nats://a:4222", "nats://b:4222"]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://nebula:s3cret@nats-1:4222", "nats://nebula:***@nats-1:4222"),
        ("nats://nebula:p@ss@nats-1:4222,nats://nats-2:4222", "nats://nebula:***@nats-1:4222,nats://nats-2:4222"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("tls://s3cret-token@host:4222", "tls://***@host:4222"),
    ],
)
def test_passwords_never_reach_a_message(url: str, shown: str) -> None:
    assert redacted(url) == shown
