"""The stateless context: round trip, compactness, and refusal of foreign or damaged data."""

import pytest

from gencli.core import context
from gencli.core.errors import ContextError
from gencli.core.request import Message


def conv(n: int) -> list[Message]:
    out = []
    for i in range(n):
        out.append(Message("user", f"question number {i}: why is the sky blue on day {i}?"))
        out.append(Message("assistant", f"answer {i}: Rayleigh scattering, as on every day ({i})."))
    return out


def test_round_trip_keeps_turns_and_drops_system():
    msgs = [Message("system", "be brief")] + conv(3) + [Message("user", "ünïcödé ✓ 🚀")]
    ints = context.encode(msgs)
    back = context.decode(ints)
    assert [(m.role, m.content) for m in back] == [(m.role, m.content) for m in msgs[1:]]


def test_ints_fit_24_bits_and_start_with_marker():
    ints = context.encode(conv(2))
    assert ints[0] == 0x676301
    assert all(type(i) is int and 0 <= i < 2**24 for i in ints)


def test_size_grows_linearly_and_stays_compact():
    sizes = [len(context.encode(conv(n))) for n in (10, 20, 40)]
    text_bytes = sum(len(m.content) for m in conv(40))
    # never more ints than a third of the raw text (3 bytes an int, compressed)
    assert sizes[2] * 3 < text_bytes
    # linear at most: doubling the conversation at most roughly doubles the size
    assert sizes[2] <= 2.2 * sizes[1] and sizes[1] <= 2.2 * sizes[0]


def test_empty_context_is_a_new_conversation():
    assert context.decode([]) == []
    assert context.decode(None) == []


@pytest.mark.parametrize(
    "bad, words",
    [
        ([1, 2, 3], "not produced by gencli"),
        ("abc", "array"),
        ([0x676301, "x"], "integers"),
        ([0x676301, -1], "integers"),
        ([0x676301, 2**30], "integers"),
        ([0x676301], "truncated"),
    ],
)
def test_foreign_or_malformed_context_is_refused(bad, words):
    with pytest.raises(ContextError) as exc:
        context.decode(bad)
    assert words in str(exc.value)


def test_damaged_or_truncated_context_is_refused():
    ints = context.encode(conv(3))
    damaged = list(ints)
    damaged[len(ints) // 2] ^= 0x55
    with pytest.raises(ContextError, match="damaged"):
        context.decode(damaged)
    with pytest.raises(ContextError, match="damaged|truncated"):
        context.decode(ints[:-3])


def test_an_array_longer_than_any_conversation_under_the_limit_is_refused_before_decoding():
    limit = 4096
    longest = context.max_ints(limit)
    with pytest.raises(ContextError, match="longer than a conversation of 4096 bytes"):
        context.decode(["not even a number"] * (longest + 1), max_bytes=limit)
    with pytest.raises(ContextError, match="array of integers"):  # one shorter: checked further
        context.decode(["not even a number"] * longest, max_bytes=limit)
