"""The message contract check: what the services send passes, what breaks the contract is named.

The examples the vendors publish (copied into /work/shared/specs) must pass as they are; every
malformed shape fails with the field and the message id named and no value quoted; a page
listing one id twice keeps the later copy. A property test holds the fast check and the slow
explanation together: they accept and reject exactly the same objects.
"""

from __future__ import annotations

import copy
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tests.client.conftest import make_client, message, page_body, settings_for
from worker.client.messages import check_message, check_page, explain, is_valid
from worker.config import Profile
from worker.errors import MalformedError
from worker.testing import FakeClock, Script, ok

THREAD = "thread_abc123"
SECRET = "what the user said"

# The Azure 2024-08-01-preview list example (no status, completed_at, incomplete_*: tolerated).
AZURE_EXAMPLE = {
    "id": "msg_abc123",
    "object": "thread.message",
    "created_at": 1699016383,
    "assistant_id": None,
    "thread_id": THREAD,
    "run_id": None,
    "role": "user",
    "content": [{"type": "text", "text": {"value": "How does AI work?", "annotations": []}}],
    "attachments": [],
    "metadata": {},
}
# Foundry's generated example: an unknown part type without payload, attachments with a null tool.
FOUNDRY_EXAMPLE = {
    "id": "bxguizpknzwsbviqulhujdvynabe",
    "object": "thread.message",
    "created_at": 4,
    "thread_id": THREAD,
    "status": "in_progress",
    "incomplete_details": {"reason": "content_filter"},
    "completed_at": 6,
    "incomplete_at": 29,
    "role": "user",
    "content": [{"type": "MessageContent"}],
    "assistant_id": "q",
    "run_id": "cktugfxnf",
    "attachments": [
        {"file_id": "mz", "data_source": {"uri": "jhg", "type": "uri_asset"}, "tools": [None]}
    ],
    "metadata": {"key7858": "htnepqi"},
}
# An OpenAI v2 assistant message with every part type, citations and a v1-era extra field.
OPENAI_FULL = {
    **AZURE_EXAMPLE,
    "id": "msg_full",
    "role": "assistant",
    "status": "incomplete",
    "incomplete_details": {"reason": "max_tokens"},
    "assistant_id": "asst_1",
    "run_id": "run_1",
    "file_ids": [],
    "metadata": None,
    "content": [
        {"type": "image_file", "image_file": {"file_id": "file-1", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "refusal", "refusal": "no"},
        {
            "type": "text",
            "text": {
                "value": "see 【4:0†source】",
                "annotations": [
                    {
                        "type": "file_citation",
                        "text": "【4:0†source】",
                        "file_citation": {"file_id": "file-2"},
                        "start_index": 4,
                        "end_index": 15,
                    }
                ],
            },
        },
        {"type": "a_part_from_the_future", "whatever": [1, 2]},
    ],
}


@pytest.mark.parametrize("obj", [AZURE_EXAMPLE, FOUNDRY_EXAMPLE, OPENAI_FULL], ids=str)
def test_what_the_services_send_passes(obj: dict[str, Any]) -> None:
    assert check_message(obj, THREAD) == obj["id"]
    assert check_page([obj], THREAD) == [obj]


def _with(**changes: Any) -> dict[str, Any]:
    obj = copy.deepcopy(AZURE_EXAMPLE)
    for key, value in changes.items():
        if value is _DROP:
            obj.pop(key)
        else:
            obj[key] = value
    return obj


_DROP = object()
_TEXT = {"type": "text", "text": {"value": SECRET, "annotations": []}}

# (the malformed object, the words the error must hold)
MALFORMED: dict[str, tuple[Any, str]] = {
    "not an object": ([SECRET], "object is a list"),
    "id missing": (_with(id=_DROP), "id is null"),
    "id empty": (_with(id=""), "id is empty"),
    "id a number": (_with(id=7), "id is a number"),
    "object wrong": (_with(object="thread.run"), 'object is not "thread.message"'),
    "created_at missing": (_with(created_at=_DROP), "created_at is null"),
    "created_at a string": (_with(created_at="1699016383"), "created_at is a string"),
    "created_at a boolean": (_with(created_at=True), "created_at is a boolean"),
    "created_at a float": (_with(created_at=1.5), "created_at is a number"),
    "thread_id of another thread": (_with(thread_id="thread_x"), "thread_id names thread_x"),
    "thread_id missing": (_with(thread_id=_DROP), "thread_id is null"),
    "role unknown": (_with(role="system"), "role is not user or assistant"),
    "role a list": (_with(role=["user"]), "role is a list"),
    "content a string": (_with(content=SECRET), "content is a string"),
    "content missing": (_with(content=_DROP), "content is null"),
    "part not an object": (_with(content=[SECRET]), "content[0] is a string"),
    "part without type": (_with(content=[{"text": SECRET}]), "content[0].type is null"),
    "text part a string": (
        _with(content=[_TEXT, {"type": "text", "text": SECRET}]),
        "content[1].text is a string",
    ),
    "text value missing": (
        _with(content=[{"type": "text", "text": {"annotations": []}}]),
        "content[0].text.value is null",
    ),
    "annotations not objects": (
        _with(content=[{"type": "text", "text": {"value": SECRET, "annotations": [SECRET]}}]),
        "content[0].text.annotations is not a list of objects",
    ),
    "image_file a string": (
        _with(content=[{"type": "image_file", "image_file": "file-1"}]),
        "content[0].image_file is a string",
    ),
    "metadata a list": (_with(metadata=[SECRET]), "metadata is a list"),
    "metadata a string": (_with(metadata=SECRET), "metadata is a string"),
    "metadata value a number": (_with(metadata={"n": 1}), "metadata holds a number value"),
    "metadata value an object": (_with(metadata={"k": {"v": SECRET}}), "metadata holds an object"),
    "status a number": (_with(status=3), "status is a number"),
    "run_id an object": (_with(run_id={}), "run_id is an object"),
    "attachments an object": (_with(attachments={}), "attachments is an object"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_message_is_named_by_field_and_id_never_by_value(case: str) -> None:
    obj, words = MALFORMED[case]
    with pytest.raises(MalformedError) as raised:
        check_page([copy.deepcopy(AZURE_EXAMPLE) | {"id": "msg_ok"}, obj], THREAD)
    text = str(raised.value)
    thread_words = words.replace("thread_id names ", "thread_id names thread ")
    assert thread_words in text
    assert f"thread {THREAD}" in text
    assert "item 1 of a page" in text
    if isinstance(obj, dict) and isinstance(obj.get("id"), str) and obj["id"]:
        assert f"message {obj['id']}" in text
    assert SECRET not in text
    assert raised.value.status is None


def test_ids_that_do_not_look_like_ids_are_not_quoted() -> None:
    """An id field is named in errors, but a hostile server could put anything there."""
    with pytest.raises(MalformedError) as raised:
        check_page([_with(id=SECRET, content=SECRET)], THREAD)
    assert SECRET not in str(raised.value)
    assert f"<an id of {len(SECRET)} characters" in str(raised.value)
    with pytest.raises(MalformedError) as raised:
        check_page([_with(thread_id=SECRET)], THREAD)
    assert SECRET not in str(raised.value)


def test_a_fetched_message_must_be_the_one_asked_for() -> None:
    with pytest.raises(MalformedError, match="id is msg_abc123, not the message asked for"):
        check_message(AZURE_EXAMPLE, THREAD, message_id="msg_other")


def test_a_page_listing_one_id_twice_keeps_the_later_copy_at_its_place() -> None:
    first = _with(id="a")
    later = _with(id="a", metadata={"copy": "later"})
    page = [first, _with(id="b"), later, _with(id="c"), _with(id="b")]
    with capture_logs() as logs:
        kept = check_page(page, THREAD)
    assert [m["id"] for m in kept] == ["a", "c", "b"]
    assert kept[0]["metadata"] == {"copy": "later"}
    warned = [e for e in logs if e["event"] == "api.duplicate_message"]
    assert sorted(e["message"] for e in warned) == ["a", "b"]
    assert all(e["copies"] == 2 and e["log_level"] == "warning" for e in warned)


@pytest.mark.anyio
async def test_a_malformed_page_is_not_retried() -> None:
    """A truncated body is retried; a well-formed one holding a malformed message is not: the
    same request would get the same answer."""
    body = page_body(["m1", "m2"], False)
    body["data"][1]["content"] = SECRET
    script = Script(ok(body), ok(page_body(["m1", "m2"], False)))
    async with make_client(script, FakeClock()) as client:
        with pytest.raises(MalformedError, match=r"message m2 .*content is a string"):
            await client.list_messages("thread_1")
    assert len(script.requests) == 1


@pytest.mark.anyio
async def test_every_message_answer_is_checked() -> None:
    """Get, create and modify answers too: another thread's message is refused."""
    other = message("msg_1", "thread_2")
    script = Script(ok(other), ok(other), ok(other))
    async with make_client(script, FakeClock()) as client:
        with pytest.raises(MalformedError, match="thread_id names thread thread_2"):
            await client.get_message("thread_1", "msg_1")
        with pytest.raises(MalformedError):
            await client.create_message("thread_1", role="user", content="hi")
        with pytest.raises(MalformedError):
            await client.modify_message("thread_1", "msg_1", {"a": "b"})


@pytest.mark.anyio
async def test_list_threads_is_not_held_to_the_message_contract() -> None:
    """Foundry's thread listing carries thread objects, not messages."""
    threads = {"data": [{"id": "thread_1", "object": "thread"}], "has_more": False}
    script = Script(httpx.Response(200, content=orjson.dumps(threads)))
    async with make_client(script, FakeClock(), api=settings_for(Profile.FOUNDRY)) as client:
        page = await client.list_threads()
    assert [t["id"] for t in page.data] == ["thread_1"]


# -- the fast check and the explanation agree --------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_FIELDS = ["id", "object", "created_at", "thread_id", "role", "content", "metadata", "status",
           "assistant_id", "run_id", "attachments"]  # fmt: skip
_part_values = st.sampled_from(["text", "image_file", "image_url", "refusal", "other"]).flatmap(
    lambda kind: st.fixed_dictionaries(
        {"type": st.just(kind) | _json},
        optional={
            kind: _json
            | st.fixed_dictionaries(
                {"value": st.text() | _json},
                optional={"annotations": st.lists(st.just({}) | _json, max_size=2) | _json},
            )
        },
    )
)


@st.composite
def _near_messages(draw: st.DrawFn) -> Any:
    """Messages of the examples with a few fields replaced, removed or given odd parts."""
    obj = copy.deepcopy(draw(st.sampled_from([AZURE_EXAMPLE, FOUNDRY_EXAMPLE, OPENAI_FULL])))
    for name in draw(st.lists(st.sampled_from(_FIELDS), max_size=3)):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            obj.pop(name, None)
        elif choice == 1:
            obj[name] = draw(_json)
        elif choice == 2:
            obj[name] = draw(st.lists(_part_values | _json, max_size=3))
        else:
            obj[name] = draw(st.dictionaries(st.text(max_size=3), st.text() | _json, max_size=3))
    return draw(st.just(obj) | _json)


@settings(max_examples=400, deadline=None)
@given(_near_messages())
def test_the_fast_check_and_its_explanation_agree(obj: Any) -> None:
    if is_valid(obj, THREAD):
        assert check_message(obj, THREAD) == obj["id"]
    else:
        error = explain(obj, THREAD, 0, None)
        assert isinstance(error, MalformedError)
        assert "is malformed: " in str(error)
