"""SSH keypairs (issue 13): each user's own public keys, by name; an instance created with
some carries their keys into its meta-data as `public-keys`. Real API, projector, NATS,
Postgres and metadata service."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nebula_core.api.keypairs import fingerprint
from nebula_meta.app import make_app as make_meta_app
from tests.integration.conftest import Cloud
from tests.integration.test_meta import fetch, instance_body, new_instance, served
from tests.support import eventually


def public_key(comment: str = "me@laptop") -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + f" {comment}"


def test_the_fingerprint_is_the_one_ssh_keygen_shows(tmp_path: Path) -> None:
    key = public_key()
    (tmp_path / "k.pub").write_text(key + "\n")
    shown = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "k.pub")], capture_output=True, text=True)
    if shown.returncode == 127:
        pytest.fail("ssh-keygen is missing (openssh-client)")
    assert shown.stdout.split()[1] == fingerprint(key)


async def test_a_user_adds_lists_and_deletes_their_own_keypairs(cloud: Cloud) -> None:
    _, alice = await cloud.user("alice-kp")
    _, bob = await cloud.user("bob-kp")
    key = public_key()

    status, created = await alice.post("/v1/keypairs", {"name": "laptop", "public_key": key + "\n"})
    assert status == 201, created
    assert created["public_key"] == key and created["fingerprint"] == fingerprint(key)
    status, again = await alice.post("/v1/keypairs", {"name": "laptop", "public_key": public_key()})
    assert status == 409, again
    status, theirs = await bob.post("/v1/keypairs", {"name": "laptop", "public_key": key})
    assert status == 201, theirs  # names are per user

    status, listed = await alice.get("/v1/keypairs")
    assert status == 200 and [k["id"] for k in listed["items"]] == [created["id"]]
    status, _ = await bob.get(f"/v1/keypairs/{created['id']}")
    assert status == 404  # another's keypair is not there for them
    status, _ = await bob.call("DELETE", f"/v1/keypairs/{created['id']}")
    assert status == 404

    status, _ = await alice.call("DELETE", f"/v1/keypairs/{created['id']}")
    assert status == 204
    status, listed = await alice.get("/v1/keypairs")
    assert listed["items"] == []
    status, _ = await alice.get(f"/v1/keypairs/{created['id']}")
    assert status == 404


@pytest.mark.parametrize(
    "key",
    [
        "not a key",
        "ssh-ed25519 AAAAnotbase64kEy",
        "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ==",  # the blob does not parse as its type
        "ssh-ed25519 AAAA\x00",
        "",
    ],
)
async def test_a_public_key_that_does_not_parse_is_a_422_naming_it(cloud: Cloud, key: str) -> None:
    status, body = await cloud.admin.post("/v1/keypairs", {"name": "bad", "public_key": key})
    assert status == 422, body
    assert body["fields"] == ["$.public_key"]


async def test_an_instance_gets_its_keypairs_in_its_meta_data_and_no_one_elses(cloud: Cloud) -> None:
    server = TestServer(make_meta_app(cloud.settings_for("meta")), host="127.0.0.1")
    await server.start_server()
    try:
        meta = str(server.make_url("")).rstrip("/")
        first, second = public_key("first"), public_key("second")
        for name, key in (("first", first), ("second", second)):
            status, body = await cloud.admin.post("/v1/keypairs", {"name": name, "public_key": key})
            assert status == 201, body
        instance_id, token = await new_instance(cloud, keypairs=["second", "first"])
        seed = f"{meta}/nocloud/{instance_id}/{token}/"
        await eventually(lambda: served(cloud.session, seed + "meta-data"))
        document = yaml.safe_load((await fetch(cloud.session, seed + "meta-data"))[1])
        assert document["public-keys"] == [second, first]

        # Without keypairs: no public-keys at all.
        plain_id, plain_token = await new_instance(cloud)
        plain = f"{meta}/nocloud/{plain_id}/{plain_token}/meta-data"
        await eventually(lambda: served(cloud.session, plain))
        assert "public-keys" not in yaml.safe_load((await fetch(cloud.session, plain))[1])
    finally:
        await server.close()

    # Another user's keypair name, or an unknown one: a 422 naming it.
    user_id, alice = await cloud.user("alice-vm")
    project_id = await cloud.project(f"p{uuid.uuid4().hex[:6]}")
    await cloud.member(project_id, user_id, "member")
    status, body = await alice.post("/v1/instances", instance_body(project_id, keypairs=["first"]))
    assert status == 422, body
    assert body["fields"] == ["$.keypairs[0]"]
