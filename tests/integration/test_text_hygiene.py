"""Text the API stores is text: NUL and other control characters are refused with a 422
naming the field (a JSON path, or `query:<name>`), in bodies and query parameters alike;
multi-line text keeps its tabs and newlines, and user-data (opaque, never in Postgres)
keeps whatever it holds. Real API, NATS and Postgres."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from nebula_core.api import queries
from nebula_core.contract.kv import InstanceSeed
from tests.integration.conftest import Cloud
from tests.integration.test_api import drive, instance_body

CONTROLS = ["\x00", "\x01", "\x1b", "\x7f", "\x85"]


@pytest.mark.parametrize("control", CONTROLS)
async def test_control_characters_in_a_body_are_refused_naming_the_field(cloud: Cloud, control: str) -> None:
    project_id = await cloud.project()
    await cloud.image()
    image = {"name": "img", "format": "qcow2", "sha256": "a" * 64}
    refusals = [
        ("POST", "/v1/projects", {"name": f"a{control}b"}, "$.name"),
        ("POST", "/v1/projects", {"name": "p2", "description": f"x{control}y"}, "$.description"),
        ("POST", "/v1/projects", {"name": "p3", "tags": {"k": f"v{control}"}}, "$.tags"),
        ("POST", "/v1/projects", {"name": "p4", "tags": {f"k{control}": "v"}}, "$.tags"),
        ("PATCH", f"/v1/projects/{project_id}", {"description": control}, "$.description"),
        ("POST", "/v1/users", {"name": f"u{control}"}, "$.name"),
        ("POST", "/v1/instances", instance_body(project_id, image=f"tiny{control}"), "$.image"),
        ("POST", "/v1/instances", instance_body(project_id, name=f"w{control}"), "$.name"),
        ("POST", "/v1/instances", instance_body(project_id, tags={"k": control}), "$.tags"),
        ("POST", "/v1/images", {**image, "source": f"https://images.example/a{control}.qcow2"}, "$.source"),
    ]
    for method, path, body, field in refusals:
        status, answer = await cloud.admin.call(method, path, json=body)
        assert (status, answer.get("fields")) == (422, [field]), (method, path, body, answer)


async def test_a_tag_value_is_one_line_but_a_description_may_hold_tabs_and_newlines(cloud: Cloud) -> None:
    status, created = await cloud.admin.post("/v1/projects", {"name": "multi", "description": "one\n\ttwo\r\nthree"})
    assert status == 201 and created["description"] == "one\n\ttwo\r\nthree"
    status, refused = await cloud.admin.post("/v1/projects", {"name": "tagged", "tags": {"k": "one\ntwo"}})
    assert (status, refused["fields"]) == (422, ["$.tags"])


async def test_user_data_of_any_characters_up_to_the_limit_is_still_accepted(cloud: Cloud) -> None:
    project_id = await cloud.project()
    await cloud.image()
    every_byte = "".join(chr(c) for c in range(0x80))  # every ASCII character, NUL and controls included
    user_data = (every_byte * (64 * 1024 // len(every_byte) + 1))[: 64 * 1024]
    status, created = await cloud.admin.post("/v1/instances", instance_body(project_id, user_data=user_data))
    assert status == 202, created
    seeds = await cloud.js.key_value("nebula_userdata")
    seed = msgspec.json.decode((await seeds.get(created["id"])).value or b"", type=InstanceSeed)
    assert seed.user_data == user_data


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/v1/nodes?region=h%00x", "region"),
        ("/v1/instances?region=%01", "region"),
        ("/v1/instances?node_id=n%00", "node_id"),
        ("/v1/instances?tag=k%00", "tag"),
        ("/v1/instances?tag=k%3Dv%1B", "tag"),
        ("/v1/projects?tag=%7F", "tag"),
        ("/v1/projects?limit=%C2%B2", "limit"),  # '²': a digit to str.isdigit(), not to int()
        ("/v1/users?limit=1%00", "limit"),
        ("/v1/images?cursor=" + queries.encode_cursor(datetime(2026, 1, 1, tzinfo=UTC), "x\x00"), "cursor"),
        ("/v1/events?since=%C2%B2", "since"),
    ],
)
async def test_control_characters_in_a_query_parameter_are_refused_naming_it(
    cloud: Cloud, path: str, parameter: str
) -> None:
    status, answer = await cloud.admin.get(path)
    assert (status, answer["fields"]) == (422, [f"query:{parameter}"]), answer


async def test_a_console_tail_of_no_whole_number_is_refused(cloud: Cloud) -> None:
    project_id = await cloud.project()
    await cloud.image()
    status, created = await cloud.admin.post("/v1/instances", instance_body(project_id))
    assert status == 202, created
    await drive(cloud, created["id"], "schedule", "launch")
    status, answer = await cloud.admin.get(f"/v1/instances/{created['id']}/console?bytes=%C2%B2")
    assert (status, answer["fields"]) == (422, ["query:bytes"]), answer


async def test_the_openapi_document_says_what_is_refused(cloud: Cloud) -> None:
    _, document = await cloud.admin.get("/v1/openapi.json")
    schemas = document["components"]["schemas"]
    instance = schemas["InstanceCreate"]["properties"]
    assert "\\x00" in instance["image"]["pattern"]
    assert "\\x00" in instance["description"]["pattern"] and "\\x09" not in instance["description"]["pattern"]
    assert "\\x00-\\x1f" in instance["tags"]["additionalProperties"]["pattern"]
    assert "pattern" not in instance["user_data"]
