"""The three-way metadata merge against a reference model, and the limits check."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.outbox import MetadataLimitError, check_limits, merge3, wire_map
from worker.outbox.limits import apply_edit
from worker.outbox.merge import Conflict, changed_keys

KEYS = st.sampled_from(["a", "b", "c", "d", "e"])
VALUES = st.sampled_from(["", "x", "y", "z"])
MAPS = st.dictionaries(KEYS, VALUES, max_size=5)
POLICY = st.sampled_from(["local", "remote"])


def reference(
    base: dict[str, str], local: dict[str, str], remote: dict[str, str]
) -> tuple[dict[str, str | None], set[str]]:
    """Textbook per-key three-way merge: who changed what, relative to the base."""
    out: dict[str, str | None] = {}
    conflicts: set[str] = set()
    for key in set(base) | set(local) | set(remote):
        b, lo, r = base.get(key), local.get(key), remote.get(key)
        local_changed, remote_changed = lo != b, r != b
        if local_changed and remote_changed and lo != r:
            conflicts.add(key)
            out[key] = r
        elif local_changed:
            out[key] = lo
        else:
            out[key] = r
    return out, conflicts


@given(MAPS, MAPS, MAPS)
def test_merge_matches_the_reference_model(
    base: dict[str, str], local: dict[str, str], remote: dict[str, str]
) -> None:
    """Per key: one-sided changes win, equal changes agree, different changes conflict."""
    result = merge3(base, local, remote)
    expected, conflict_keys = reference(base, local, remote)
    assert {c.key for c in result.conflicts} == conflict_keys
    assert result.merged == {k: v for k, v in expected.items() if v is not None}
    for c in result.conflicts:
        assert (c.base, c.local, c.remote) == (base.get(c.key), local.get(c.key), remote.get(c.key))


@given(MAPS, MAPS)
def test_one_sided_changes_pass_through(base: dict[str, str], other: dict[str, str]) -> None:
    """Nothing changed remotely: the result is the local map; and the other way round."""
    assert merge3(base, other, base).merged == other
    assert merge3(base, other, base).clean
    assert merge3(base, base, other).merged == other


@given(MAPS, MAPS, MAPS)
def test_merge_is_symmetric_in_its_conflicts(
    base: dict[str, str], local: dict[str, str], remote: dict[str, str]
) -> None:
    """Swapping the sides swaps the winners but not which keys conflict."""
    ab, ba = merge3(base, local, remote), merge3(base, remote, local)
    assert [c.key for c in ab.conflicts] == [c.key for c in ba.conflicts]
    if ab.clean:
        assert ab.merged == ba.merged
        assert ab.resolved("local") == ba.resolved("remote")


@given(MAPS, MAPS, MAPS, POLICY)
def test_policies_pick_a_side_for_every_conflict(
    base: dict[str, str], local: dict[str, str], remote: dict[str, str], policy: str
) -> None:
    """`local` takes the local value of every conflicting key, `remote` the remote one."""
    result = merge3(base, local, remote)
    resolved = result.resolved(policy)  # type: ignore[arg-type]
    for c in result.conflicts:
        side = c.local if policy == "local" else c.remote
        assert resolved.get(c.key) == side


@settings(max_examples=300)
@given(MAPS, MAPS, MAPS, st.sampled_from(["fail", "local", "remote"]))
def test_a_second_push_finds_nothing_to_send(
    base: dict[str, str], local: dict[str, str], remote: dict[str, str], policy: str
) -> None:
    """Exactly-once, as maths: once the server holds the pushed map, merging the same edit again
    yields that map and no conflict the first round did not have (so no second modify)."""
    wish = wire_map(local, base)  # how push normalises a wish: a dropped base key is blanked
    first = merge3(base, wish, remote)
    if policy == "fail" and not first.clean:
        return
    sent = wire_map(first.resolved(policy), remote)  # type: ignore[arg-type]
    second = merge3(base, wish, sent)
    if policy == "fail":
        assert second.clean
    assert wire_map(second.resolved(policy), sent) == sent  # type: ignore[arg-type]
    assert changed_keys(sent, wire_map(second.resolved(policy), sent)) == []  # type: ignore[arg-type]


@given(MAPS, MAPS)
def test_wire_map_lands_the_same_on_merging_and_replacing_services(
    result: dict[str, str], remote: dict[str, str]
) -> None:
    """Sending the wire map yields one final map whether the service merges or replaces."""
    sent = wire_map(result, remote)
    assert {**remote, **sent} == sent
    assert {k: v for k, v in sent.items() if v} == {k: v for k, v in result.items() if v}


def test_conflict_lists_all_three_values() -> None:
    """A key changed on both sides to different values is reported with base, local, remote."""
    result = merge3({"k": "a", "s": "1"}, {"k": "b", "s": "1"}, {"k": "c", "s": "2"})
    assert result.conflicts == (Conflict("k", "a", "b", "c"),)
    assert result.merged == {"k": "c", "s": "2"}
    assert result.resolved("local") == {"k": "b", "s": "2"}


@pytest.mark.parametrize(
    ("metadata", "key", "limit"),
    [
        ({f"k{i}": "v" for i in range(17)}, None, "<= 16 pairs"),
        ({"k" * 65: "v"}, "k" * 65, "key <= 64 characters"),
        ({"k": "v" * 513}, "k", "value <= 512 characters"),
        ({"k": 3}, "k", "string values"),
    ],
)
def test_limits_name_the_key_and_the_limit(
    metadata: dict[str, object], key: str | None, limit: str
) -> None:
    """Each of the service's limits is reported with the key (if any) and the limit broken."""
    with pytest.raises(MetadataLimitError) as info:
        check_limits(metadata)
    assert info.value.key == key
    assert info.value.limit == limit


def test_limits_accept_the_exact_maxima() -> None:
    """16 pairs with 64-character keys and 512-character values are allowed."""
    check_limits({f"{i:02d}".ljust(64, "k"): "v" * 512 for i in range(16)})


def test_unset_blanks_remote_keys_and_drops_local_ones() -> None:
    """Unsetting a key the server has blanks it; unsetting a key only the edit added drops it."""
    base = {"a": "1"}
    desired = apply_edit(base, base, set={"b": "2"})
    assert apply_edit(desired, base, unset=["a", "b"]) == {"a": ""}


def test_blanked_keys_count_toward_the_pair_limit() -> None:
    """A blank still occupies a pair on the server, so it counts."""
    base = {f"k{i}": "v" for i in range(16)}
    blanked = apply_edit(base, base, unset=["k0"])
    with pytest.raises(MetadataLimitError):
        apply_edit(blanked, base, set={"new": "x"})
