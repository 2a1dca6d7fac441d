"""`nebula keypair …` and `nebula instance create --keypair` / `nebula instance ssh` (issue 13),
as a user types them, against the real API."""

from __future__ import annotations

import stat
from pathlib import Path

from nebula_core.contract.types import InstanceAddress
from tests.integration.conftest import Cloud
from tests.integration.test_cli import CREATE, Nebula, alpha_with_alice, change, the_instance
from tests.integration.test_cli import nebula as nebula  # the fixture, shared
from tests.support import eventually


async def test_a_keypair_is_made_imported_listed_used_and_deleted(cloud: Cloud, nebula: Nebula, tmp_path: Path) -> None:
    _, alice = await alpha_with_alice(cloud)
    key = tmp_path / "laptop"

    made = await nebula("keypair", "create", "laptop", "--out", str(key), "--json", token=alice)
    assert made.code == 0, made.err
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert (tmp_path / "laptop.pub").read_text().strip() == made.json()["public_key"]
    again = await nebula("keypair", "create", "laptop", "--out", str(key), token=alice)
    assert again.code == 2 and "exists" in again.err  # never over a private key

    (tmp_path / "id.pub").write_text(made.json()["public_key"].replace("laptop", "desk") + "\n")
    imported = await nebula("keypair", "import", "desk", "--public-key", str(tmp_path / "id.pub"), token=alice)
    assert imported.code == 0, imported.err
    (tmp_path / "bad.pub").write_text("ssh-rsa nonsense\n")
    bad = await nebula("keypair", "import", "bad", "--public-key", str(tmp_path / "bad.pub"), token=alice)
    assert bad.code != 0 and "public_key" in bad.error

    listed = await nebula("keypair", "list", "--json", token=alice)
    assert sorted(k["name"] for k in listed.json()) == ["desk", "laptop"]
    assert (await nebula("keypair", "list", "--json")).json() == []  # the admin's are the admin's

    created = await nebula(*CREATE, "--keypair", "laptop", token=alice)
    assert created.code == 0, created.err
    unknown = await nebula(*CREATE[:5], "web-2", *CREATE[6:], "--keypair", "nope", token=alice)
    assert unknown.code != 0 and "keypairs[0]" in unknown.error

    deleted = await nebula("keypair", "delete", "desk", token=alice)
    assert deleted.code == 0, deleted.err
    assert [k["name"] for k in (await nebula("keypair", "list", "--json", token=alice)).json()] == ["laptop"]


async def test_instance_ssh_needs_an_address_and_a_user(cloud: Cloud, nebula: Nebula) -> None:
    _, alice = await alpha_with_alice(cloud)
    assert (await nebula(*CREATE, token=alice)).code == 0
    instance_id = await the_instance(cloud)

    early = await nebula("instance", "ssh", "web-1", "--project", "alpha", token=alice)
    assert early.code == 2 and "has no address" in early.err

    address = InstanceAddress(network="nebula", mac="52:54:00:00:00:01", ipv4="192.0.2.10")
    await change(
        cloud, instance_id, lambda i: i.schedule("n1"), lambda i: i.launch(), lambda i: i.readdress((address,))
    )

    async def shown() -> bool:
        ran = await nebula("instance", "show", "web-1", "--project", "alpha", "--json", token=alice)
        return bool(ran.json()["addresses"])

    await eventually(shown)
    listed = await nebula("instance", "list", token=alice)
    assert "192.0.2.10" in listed.out
    no_user = await nebula("instance", "ssh", "web-1", "--project", "alpha", token=alice)
    assert no_user.code == 2 and "--user" in no_user.err  # nebula-tiny names no default user
    # With a user, it runs ssh to the address (here: told to only print its configuration).
    ran = await nebula(
        "instance", "ssh", "web-1", "--project", "alpha", "-l", "debian", "--", "-G", token=alice, timeout=30
    )
    assert ran.code == 0, ran.err
    assert "hostname 192.0.2.10" in ran.out and "user debian" in ran.out
