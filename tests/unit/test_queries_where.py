"""The SQL WHERE builder as a pure function: for each filter a caller can send, the SQL
text and the parameters it produces. Whatever the caller sends travels as a numbered
parameter ($1, $2, … in order, each once); the SQL is made of our fragments only."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import MultiDict

from nebula_core.api import queries
from nebula_core.api.auth import Principal
from nebula_core.api.queries import Where
from nebula_core.contract.errors import Invalid

ADMIN = Principal(user_id=None, name="admin", is_admin=True)
ALICE = Principal(user_id=uuid.UUID("00000000-0000-0000-0000-0000000000a1"), name="alice", is_admin=False)
MEMBER_OF = (
    "i.project_id IN (SELECT m.project_id FROM memberships m JOIN projects p ON p.id = m.project_id\n"
    "                                WHERE m.user_id = $1 AND NOT p.deleted)"
)


def q(*pairs: tuple[str, str]) -> MultiDict[str]:
    """A query string as aiohttp hands it over (a key may repeat)."""
    return MultiDict(pairs)


def placeholders(sql: str) -> list[int]:
    return [int(n) for n in re.findall(r"\$(\d+)", sql)]


def assert_numbered(sql: str, args: list[object]) -> None:
    """Every parameter is used once, in order, and nothing else is a placeholder."""
    assert placeholders(sql) == list(range(1, len(args) + 1))


# --- the builder itself ------------------------------------------------------------------


def test_no_clause_is_true_and_has_no_parameters() -> None:
    where = Where()
    assert where.sql() == "true"
    assert where.args == []


def test_values_become_parameters_numbered_across_clauses_in_order() -> None:
    where = Where()
    where.add("NOT x.deleted")
    where.add("x.a = {}", "one")
    where.add("(x.b, x.c) > ({}, {})", 2, "three")
    assert where.sql() == "NOT x.deleted AND x.a = $1 AND (x.b, x.c) > ($2, $3)"
    assert where.args == ["one", 2, "three"]


def test_text_that_looks_like_sql_or_a_format_field_stays_a_parameter() -> None:
    where = Where()
    hostile = "x' OR '1'='1'; DROP TABLE projects; -- {} {0} $1"
    where.add("x.name = {}", hostile)
    assert where.sql() == "x.name = $1"
    assert where.args == [hostile]


def test_param_gives_the_next_placeholder() -> None:
    where = Where()
    where.add("x.a = {}", "a")
    assert where.param(10) == "$2"
    assert where.args == ["a", 10]


# --- pages ---------------------------------------------------------------------------------


def test_a_first_page_orders_by_creation_and_asks_one_row_more_than_the_limit() -> None:
    where = Where()
    order, limit = where.page(q(), "p")
    assert (order, limit) == ("ORDER BY p.created_at, p.id LIMIT $1", queries.DEFAULT_LIMIT)
    assert where.sql() == "true"
    assert where.args == [queries.DEFAULT_LIMIT + 1]


def test_a_cursor_continues_after_the_row_it_names_and_the_limit_comes_last() -> None:
    created_at = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    row_id = uuid.uuid4()
    cursor = queries.encode_cursor(created_at, row_id)
    where = Where()
    where.add("NOT p.deleted")
    order, limit = where.page(q(("cursor", cursor), ("limit", "7")), "p")
    assert where.sql() == "NOT p.deleted AND (p.created_at, p.id::text) > ($1, $2)"
    assert order == "ORDER BY p.created_at, p.id LIMIT $3"
    assert where.args == [created_at, str(row_id), 8]
    assert limit == 7


@pytest.mark.parametrize("limit", ["0", "501", "-1", "ten", "1e2", ""])
def test_a_limit_out_of_range_or_not_a_number_is_refused(limit: str) -> None:
    with pytest.raises(Invalid) as refused:
        Where().page(q(("limit", limit)), "p")
    assert refused.value.fields == ["query:limit"]


@pytest.mark.parametrize("cursor", ["nonsense", "W10", queries.encode_cursor(datetime.now(UTC), "x")[:-3]])
def test_a_cursor_this_api_did_not_give_out_is_refused(cursor: str) -> None:
    with pytest.raises(Invalid) as refused:
        Where().page(q(("cursor", cursor)), "p")
    assert refused.value.fields == ["query:cursor"]


# --- tags ----------------------------------------------------------------------------------


def test_a_tag_key_asks_for_the_key_and_key_value_for_the_pair() -> None:
    where = Where()
    queries.tag_filters(where, q(("tag", "tier"), ("tag", "team=infra=core")), "i")
    assert where.sql() == "i.tags ? $1 AND i.tags @> $2::jsonb"
    assert where.args == ["tier", {"team": "infra=core"}]


def test_a_tag_with_an_empty_value_asks_for_the_empty_value() -> None:
    where = Where()
    queries.tag_filters(where, q(("tag", "tier=")), "p")
    assert where.sql() == "p.tags @> $1::jsonb"
    assert where.args == [{"tier": ""}]


@pytest.mark.parametrize("tag", ["", "=web"])
def test_a_tag_without_a_key_is_refused(tag: str) -> None:
    with pytest.raises(Invalid) as refused:
        queries.tag_filters(Where(), q(("tag", tag)), "i")
    assert refused.value.fields == ["query:tag"]


# --- projects ------------------------------------------------------------------------------


def test_an_admin_sees_every_live_project() -> None:
    where = queries.project_filters(ADMIN, q())
    assert where.sql() == "NOT p.deleted"
    assert where.args == []


def test_a_user_sees_the_live_projects_they_are_a_member_of() -> None:
    where = queries.project_filters(ALICE, q(("tag", "team=infra")))
    assert where.sql() == (
        "NOT p.deleted AND p.id IN (SELECT project_id FROM memberships WHERE user_id = $1) AND p.tags @> $2::jsonb"
    )
    assert where.args == [ALICE.user_id, {"team": "infra"}]


# --- instances -----------------------------------------------------------------------------


def test_by_default_an_admin_sees_every_instance_not_deleted() -> None:
    where = queries.instance_filters(ADMIN, q())
    assert where.sql() == "i.state <> 'deleted'"
    assert where.args == []


def test_a_user_sees_the_instances_of_their_live_projects() -> None:
    where = queries.instance_filters(ALICE, q())
    assert where.sql() == f"{MEMBER_OF} AND i.state <> 'deleted'"
    assert where.args == [ALICE.user_id]


def test_every_instance_filter_at_once_in_a_fixed_order() -> None:
    project_id = uuid.uuid4()
    query = q(
        ("tag", "tier=web"),
        ("node_id", "node-a"),
        ("project_id", str(project_id)),
        ("region", "eu"),
        ("state", "deleted"),
        ("tag", "owner"),
    )
    where = queries.instance_filters(ADMIN, query)
    assert where.sql() == (
        "i.state = $1 AND i.region = $2 AND i.project_id = $3 AND i.node_id = $4"
        " AND i.tags @> $5::jsonb AND i.tags ? $6"
    )
    assert where.args == ["deleted", "eu", project_id, "node-a", {"tier": "web"}, "owner"]


def test_only_cloud_admins_filter_by_node() -> None:
    where = queries.instance_filters(ALICE, q(("node_id", "node-a"), ("state", "running")))
    assert where.sql() == f"{MEMBER_OF} AND i.state = $2"
    assert where.args == [ALICE.user_id, "running"]


def test_an_unknown_state_is_refused_naming_the_parameter() -> None:
    with pytest.raises(Invalid) as refused:
        queries.instance_filters(ADMIN, q(("state", "running' OR 1=1 --")))
    assert refused.value.fields == ["query:state"]


def test_a_project_id_that_is_not_a_uuid_is_refused() -> None:
    with pytest.raises(Invalid) as refused:
        queries.instance_filters(ADMIN, q(("project_id", "alpha")))
    assert refused.value.fields == ["query:project_id"]


def test_filters_and_a_page_together_number_every_parameter_once_in_order() -> None:
    cursor = queries.encode_cursor(datetime(2026, 1, 1, tzinfo=UTC), uuid.uuid4())
    where = queries.instance_filters(ALICE, q(("region", "eu"), ("tag", "a=b"), ("cursor", cursor)))
    order, _ = where.page(q(("cursor", cursor), ("limit", "3")), "i")
    assert_numbered(f"{where.sql()} {order}", where.args)
    assert where.args[0] == ALICE.user_id and where.args[-1] == 4


# --- whatever the caller sends ------------------------------------------------------------

#: What a query parameter may say: any text but control characters (refused, see below).
_TEXT = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\ufffe\uffff"), min_size=1, max_size=40
)
_FILTERS = st.lists(
    st.one_of(
        st.tuples(st.just("region"), _TEXT),
        st.tuples(st.just("node_id"), _TEXT),
        st.tuples(st.just("tag"), _TEXT.filter(lambda t: not t.startswith("="))),
        st.tuples(st.just("state"), st.sampled_from(["pending", "running", "deleted", "error"])),
        st.tuples(st.just("project_id"), st.uuids().map(str)),
    ),
    max_size=8,
    unique_by=lambda pair: pair[0] if pair[0] != "tag" else pair[1],
)


def _neutral(key: str, value: str) -> tuple[str, str]:
    """A filter of the same kind as (key, value) that says nothing in particular."""
    if key == "tag":
        return key, "k=v" if "=" in value else "k"
    if key in ("region", "node_id"):
        return key, "x"
    return key, value


@given(filters=_FILTERS, who=st.sampled_from([ADMIN, ALICE]), limit=st.integers(1, queries.MAX_LIMIT))
def test_the_sql_depends_on_which_filters_are_given_never_on_what_they_say(
    filters: list[tuple[str, str]], who: Principal, limit: int
) -> None:
    query = q(*filters, ("limit", str(limit)))
    where = queries.instance_filters(who, query)
    order, _ = where.page(query, "i")
    sql = f"{where.sql()} {order}"
    assert_numbered(sql, where.args)

    neutral_query = q(*[_neutral(k, v) for k, v in filters], ("limit", "1"))
    neutral = queries.instance_filters(who, neutral_query)
    neutral_order, _ = neutral.page(neutral_query, "i")
    assert sql == f"{neutral.sql()} {neutral_order}"


_CONTROL = st.sampled_from([chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]] + ["\ufffe", "\uffff"])


@given(name=st.sampled_from(["region", "node_id", "tag"]), before=_TEXT, control=_CONTROL, after=_TEXT)
def test_a_control_character_in_a_text_parameter_is_refused_naming_it(
    name: str, before: str, control: str, after: str
) -> None:
    with pytest.raises(Invalid) as refused:
        queries.instance_filters(ADMIN, q((name, before + control + after)))
    assert refused.value.fields == [f"query:{name}"]


@pytest.mark.parametrize("limit", ["²", "１０", "1\x00"])
def test_a_limit_of_digits_other_than_ascii_is_refused(limit: str) -> None:
    with pytest.raises(Invalid) as refused:
        Where().page(q(("limit", limit)), "p")
    assert refused.value.fields == ["query:limit"]


def test_a_cursor_naming_a_row_that_is_no_uuid_is_refused() -> None:
    cursor = queries.encode_cursor(datetime.now(UTC), "x\x00")
    with pytest.raises(Invalid) as refused:
        Where().page(q(("cursor", cursor)), "p")
    assert refused.value.fields == ["query:cursor"]
