"""The mapping of every content type, checked against the 2026-08-21 schema and the emulator's
service rules; the policies; chunking; the conversation's metadata."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.emulator.conversation_schema import validate, validate_message_item
from worker.emulator.conversations import check_item
from worker.migrate.mapping import (
    MAX_PAIRS,
    Mapped,
    MappingError,
    Policy,
    Source,
    canonical,
    chunks,
    conversation_metadata,
    map_message,
    same_items,
    stamp,
)

T0 = 1_777_636_800  # 2026-05-01 12:00:00 UTC


def text(value: str, *notes: dict[str, Any]) -> dict[str, Any]:
    return {"type": "text", "text": {"value": value, "annotations": list(notes)}}


def message(role: str, *content: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "object": "thread.message",
        "created_at": T0,
        "thread_id": "thread_1",
        "role": role,
        "content": list(content),
        "attachments": extra.pop("attachments", []),
        "metadata": {"k": "v"},
        "assistant_id": "asst_1" if role == "assistant" else None,
        "run_id": "run_1" if role == "assistant" else None,
        **extra,
    }


CITATION = {
    "type": "file_citation",
    "text": "\u30104:0\u2020source\u3011",
    "file_citation": {"file_id": "file-cited", "quote": "the quote"},
    "start_index": 5,
    "end_index": 17,
}
FILE_PATH = {
    "type": "file_path",
    "text": "sandbox:/mnt/data/a.csv",
    "file_path": {"file_id": "file-out"},
    "start_index": 9,
    "end_index": 32,
}
IMAGE_FILE = {"type": "image_file", "image_file": {"file_id": "file-img", "detail": "low"}}
IMAGE_URL = {"type": "image_url", "image_url": {"url": "https://example.com/i.png"}}
REFUSAL = {"type": "refusal", "refusal": "I cannot"}
ATTACHMENT = {"file_id": "file-att", "tools": [{"type": "file_search"}]}


def accepted(mapped: Mapped) -> None:
    """The item is a valid InputItem, and the service's role rules accept it."""
    validate_message_item(mapped.item)
    check_item(mapped.item, "items[0]")
    if mapped.item["role"] == "assistant":
        assert {p["type"] for p in mapped.item["content"]} <= {"output_text", "refusal"}


def test_user_text_and_images_and_attachment() -> None:
    mapped = map_message(
        message("user", text("hi"), IMAGE_FILE, IMAGE_URL, attachments=[ATTACHMENT])
    )
    accepted(mapped)
    assert mapped.item["content"] == [
        {"type": "input_text", "text": "hi"},
        {"type": "input_image", "detail": "low", "file_id": "file-img"},
        {"type": "input_image", "detail": "auto", "image_url": "https://example.com/i.png"},
        {"type": "input_file", "file_id": "file-att"},
    ]
    assert [(c.part, c.action) for c in mapped.changes] == [("attachments[0]", "replaced")]
    assert "file_search" in mapped.changes[0].reason


def test_assistant_text_annotations_images_refusal() -> None:
    mapped = map_message(
        message(
            "assistant",
            text("see it \u30104:0\u2020source\u3011", CITATION, FILE_PATH),
            IMAGE_FILE,
            REFUSAL,
        )
    )
    accepted(mapped)
    first, placeholder, refusal = mapped.item["content"]
    assert first["type"] == "output_text"
    assert first["annotations"] == [{"type": "file_path", "file_id": "file-out", "index": 9}]
    assert first["text"].endswith(
        '\n\n[1] \u30104:0\u2020source\u3011 file_citation file-cited: "the quote"'
    )
    assert placeholder == {
        "type": "output_text",
        "text": "[image: file-img]",
        "annotations": [],
        "logprobs": [],
    }
    assert refusal == {"type": "refusal", "refusal": "I cannot"}
    assert [(c.part, c.action) for c in mapped.changes] == [
        ("content[0].annotations[0] file_citation", "replaced"),
        ("content[1] image_file", "replaced"),
    ]


def test_annotation_drop_policy_keeps_the_text_as_it_was() -> None:
    mapped = map_message(message("assistant", text("x", CITATION)), Policy(annotations="drop"))
    accepted(mapped)
    assert mapped.item["content"][0]["text"] == "x"
    assert mapped.changes[0].action == "dropped"


@pytest.mark.parametrize(
    ("policy", "content", "action"),
    [
        ("file", {"type": "input_file", "file_id": "file-att"}, None),
        ("placeholder", {"type": "input_text", "text": "[attachment: file-att]"}, "replaced"),
        ("drop", None, "dropped"),
    ],
)
def test_attachment_policies(policy: Any, content: Any, action: str | None) -> None:
    mapped = map_message(
        message("user", text("q"), attachments=[{"file_id": "file-att", "tools": []}]),
        Policy(attachments=policy),
    )
    accepted(mapped)
    assert mapped.item["content"][1:] == ([content] if content else [])
    assert [c.action for c in mapped.changes] == ([action] if action else [])


def test_assistant_attachment_and_user_refusal_become_text() -> None:
    assistant = map_message(message("assistant", text("a"), attachments=[ATTACHMENT]))
    accepted(assistant)
    assert assistant.item["content"][1]["text"] == "[attachment: file-att (file_search)]"
    user = map_message(message("user", REFUSAL))
    accepted(user)
    assert user.item["content"] == [{"type": "input_text", "text": "[refusal] I cannot"}]


def test_timestamp_prefix_and_empty_and_unknown_parts() -> None:
    assert stamp(T0) == "[2026-05-01 12:00 UTC] "
    prefixed = map_message(message("assistant", text("hello")), Policy(timestamps="prefix"))
    assert prefixed.item["content"][0]["text"] == "[2026-05-01 12:00 UTC] hello"
    image_only = map_message(message("user", IMAGE_FILE), Policy(timestamps="prefix"))
    accepted(image_only)
    assert image_only.item["content"][0] == {"type": "input_text", "text": "[2026-05-01 12:00 UTC]"}
    empty = map_message(message("user"))
    accepted(empty)
    assert empty.item["content"] == [{"type": "input_text", "text": ""}]
    odd = map_message(message("user", {"type": "audio", "audio": {}}))
    accepted(odd)
    assert odd.changes[0].reason == "no Conversations equivalent is known"


def test_provenance_never_leaks_into_the_item() -> None:
    mapped = map_message(message("assistant", text("x")))
    assert set(mapped.item) == {"type", "role", "content"}


def test_unmappable_messages_are_named() -> None:
    with pytest.raises(MappingError, match="msg_1: role 'system'"):
        map_message(message("system", text("x")))
    with pytest.raises(MappingError, match="content is not a list"):
        map_message({**message("user"), "content": 5})


@pytest.mark.parametrize(
    ("count", "sizes"), [(0, []), (1, [1]), (20, [20]), (21, [20, 1]), (100, [20] * 5)]
)
def test_chunking(count: int, sizes: list[int]) -> None:
    items = [Mapped(f"m{i}", {}) for i in range(count)]
    batches = list(chunks(items))
    assert [len(b) for b in batches] == sizes
    assert [m.message_id for b in batches for m in b] == [m.message_id for m in items]


def test_canonical_matches_the_listed_shape() -> None:
    mapped = map_message(message("assistant", text("x", FILE_PATH), REFUSAL))
    listed = {
        "type": "message",
        "id": "msg_9",
        "status": "completed",
        "role": "assistant",
        "content": [
            {"type": "output_text", "text": "x", "annotations": [], "logprobs": []},
            {"type": "refusal", "refusal": "I cannot"},
        ],
    }
    assert same_items([mapped.item], [listed])
    assert canonical({"role": "assistant", "content": "x"}) == (
        "assistant",
        (("output_text", "x"),),
    )
    assert not same_items([mapped.item], [{**listed, "role": "user"}])
    assert not same_items([mapped.item], [listed, listed])


def test_conversation_metadata_rules() -> None:
    thread_meta = {f"k{i:02}": "v" for i in range(12)} | {"migrated_at": "x", "big": "v" * 513}
    metadata, left = conversation_metadata(
        Source("thread_1", "azure", 3, T0, T0 + 60, T0 + 3600, "mig-1", thread_meta)
    )
    assert len(metadata) == MAX_PAIRS
    assert metadata["source_thread_id"] == "thread_1"
    assert metadata["source_first_at"] == "2026-05-01T12:00:00Z"
    assert metadata["migrated_at"] == "2026-05-01T13:00:00Z"
    assert [k for k in metadata if k.startswith("k")] == [f"k{i:02}" for i in range(9)]
    assert any(s.startswith("big:") for s in left)
    assert any(s.startswith("migrated_at:") for s in left)
    assert sum("no room" in s for s in left) == 3
    validate("CreateConversationBody", {"metadata": metadata})


_TEXT = st.text(st.characters(codec="utf-8"), max_size=30)
_NOTE = st.sampled_from([CITATION, FILE_PATH])
_PART = st.one_of(
    st.builds(lambda v, n: text(v, *n), _TEXT, st.lists(_NOTE, max_size=2)),
    st.just(IMAGE_FILE),
    st.just(IMAGE_URL),
    st.just(REFUSAL),
    st.builds(lambda t: {"type": t}, st.sampled_from(["audio", "weird"])),
)


@settings(max_examples=150, deadline=None)
@given(
    role=st.sampled_from(["user", "assistant"]),
    parts=st.lists(_PART, max_size=5),
    attachments=st.lists(st.just(ATTACHMENT), max_size=2),
    policy=st.builds(
        Policy,
        st.sampled_from(["footnote", "drop"]),
        st.sampled_from(["file", "placeholder", "drop"]),
        st.sampled_from(["none", "prefix"]),
    ),
)
def test_any_message_maps_to_an_item_the_service_takes(
    role: str, parts: list[dict[str, Any]], attachments: list[Any], policy: Policy
) -> None:
    mapped = map_message(message(role, *parts, attachments=attachments), policy)
    validate_message_item(mapped.item)
    stored_role, stored = check_item(mapped.item, "items[0]")
    listed = {"role": stored_role, "content": stored}
    assert canonical(listed) == canonical(mapped.item)  # what settling and verify rely on
