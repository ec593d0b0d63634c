"""Unit tests of the SSE decoder (gencli.core.sse) and the <think> splitter (gencli.core.think)."""

from __future__ import annotations

import random

import pytest

from gencli.core.errors import UpstreamError
from gencli.core.sse import MAX_EVENT, EventTooLarge, SSEDecoder
from gencli.core.think import ThinkSplitter, split_complete

STREAM = (
    b'data: {"a":1}\n\n'
    b": OPENROUTER PROCESSING\n\n"
    b'event: message\nid: 7\ndata: {"b":2}\n\n'
    b"data: line one\ndata: line two\n\n"
    b"data:nospace\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [b'{"a":1}', b'{"b":2}', b"line one\nline two", b"nospace", b"[DONE]"]


def decode_all(data: bytes, cuts: list[int]) -> list[bytes]:
    dec = SSEDecoder()
    out: list[bytes] = []
    prev = 0
    for cut in cuts + [len(data)]:
        out += dec.feed(data[prev:cut])
        prev = cut
    return out + dec.close()


def test_sse_whole_stream():
    assert decode_all(STREAM, []) == EXPECTED


def test_sse_crlf_line_ends():
    assert decode_all(STREAM.replace(b"\n", b"\r\n"), []) == EXPECTED


@pytest.mark.parametrize("seed", range(20))
def test_sse_any_split_gives_the_same_events(seed):
    rng = random.Random(seed)
    data = STREAM.replace(b"\n", b"\r\n") if seed % 2 else STREAM
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 15)))
    assert decode_all(data, cuts) == EXPECTED


def test_sse_byte_by_byte_crlf_split_between_cr_and_lf():
    data = b'data: {"x":1}\r\n\r\ndata: {"y":2}\r\n\r\n'
    assert decode_all(data, list(range(1, len(data)))) == [b'{"x":1}', b'{"y":2}']


@pytest.mark.parametrize("crlf", [False, True])
def test_sse_every_cut_and_every_pair_of_cuts_gives_the_same_events(crlf):
    data = STREAM.replace(b"\n", b"\r\n") if crlf else STREAM
    for a in range(len(data) + 1):
        assert decode_all(data, [a]) == EXPECTED, a
        for b in range(a, len(data) + 1, 7):
            assert decode_all(data, [a, b]) == EXPECTED, (a, b)
    assert decode_all(data, list(range(1, len(data)))) == EXPECTED  # byte by byte


def test_sse_a_long_line_in_small_chunks_decodes_whole():
    payload = b'{"t":"' + b"x" * 300_000 + b'"}'
    data = b"data: " + payload + b"\n\n"
    assert decode_all(data, list(range(1, len(data), 13))) == [payload]


def test_sse_an_event_of_max_size_passes():
    payload = b"y" * (MAX_EVENT - 16)  # the line and the event just under the cap
    data = b"data: " + payload + b"\n\n"
    assert decode_all(data, list(range(4096, len(data), 65536))) == [payload]


def test_sse_a_line_without_newline_past_the_cap_is_refused_as_it_streams():
    dec = SSEDecoder()
    assert dec.feed(b'data: {"a":1}\n\ndata: ') == [b'{"a":1}']
    piece = b"z" * 65536
    with pytest.raises(EventTooLarge) as info:
        for _ in range(MAX_EVENT // len(piece) + 2):
            assert dec.feed(piece) == []
    assert str(info.value) == "the upstream sent an event larger than 8 MB"
    assert isinstance(info.value, UpstreamError) and info.value.status == 502
    assert info.value.payloads == []
    assert dec.close() == []  # nothing of the refused event is held


def test_sse_many_data_lines_past_the_cap_are_refused_with_the_events_before_kept():
    line = b"data: " + b"q" * 1000 + b"\n"
    chunk = b'data: {"before":1}\n\n' + line * (MAX_EVENT // 1000 + 1)
    dec = SSEDecoder()
    with pytest.raises(EventTooLarge) as info:
        dec.feed(chunk)
    assert info.value.payloads == [b'{"before":1}']


def test_sse_a_giant_comment_line_is_refused_too():
    with pytest.raises(EventTooLarge):
        decode_all(b": " + b"k" * MAX_EVENT + b"\n\ndata: 1\n\n", [])


def test_sse_a_giant_line_in_one_chunk_is_refused():
    with pytest.raises(EventTooLarge):
        SSEDecoder().feed(b"data: " + b"w" * (MAX_EVENT + 1))


def test_sse_comments_only_yield_nothing():
    dec = SSEDecoder()
    assert dec.feed(b": keep-alive\n\n: again\n\n") == []
    assert dec.close() == []


def test_sse_unterminated_last_event_is_flushed_on_close():
    dec = SSEDecoder()
    assert dec.feed(b'data: {"a":1}\n\ndata: {"tail":true}') == [b'{"a":1}']
    assert dec.close() == [b'{"tail":true}']


def test_sse_multibyte_utf8_split_inside_a_character():
    payload = '{"t":"héllo ✓"}'.encode()
    data = b"data: " + payload + b"\n\n"
    cut = data.index("✓".encode()) + 1
    assert decode_all(data, [cut]) == [payload]


# -- think ---------------------------------------------------------------------


def stream_split(chunks: list[str], implicit: bool = False) -> tuple[str, str]:
    sp = ThinkSplitter(implicit_open=implicit)
    r, t = [], []
    for c in chunks:
        a, b = sp.feed(c)
        r.append(a)
        t.append(b)
    a, b = sp.close()
    return "".join(r + [a]), "".join(t + [b])


def test_think_tags_in_one_chunk():
    assert stream_split(["<think>plan</think>\n\nanswer"]) == ("plan", "answer")


def test_think_tags_split_across_chunks():
    chunks = ["<thi", "nk>Pondering ", "deeply.</th", "ink>", "\n\nThe answer", " is 42."]
    assert stream_split(chunks) == ("Pondering deeply.", "The answer is 42.")


def test_think_newlines_after_close_tag_in_their_own_chunk():
    assert stream_split(["<think>r</think>", "\n", "\n", "text\n\nmore"]) == ("r", "text\n\nmore")


@pytest.mark.parametrize("seed", range(30))
def test_think_every_split_gives_the_same_result(seed):
    whole = "  <think>first thought\nsecond</think>\n\nThe <b>answer</b> is 42.\n"
    rng = random.Random(seed)
    cuts = sorted(set(rng.sample(range(1, len(whole)), rng.randint(1, 20))))
    chunks = [whole[i:j] for i, j in zip([0] + cuts, cuts + [len(whole)], strict=True)]
    assert stream_split(chunks) == ("first thought\nsecond", "The <b>answer</b> is 42.\n")


def test_no_tags_is_all_text_and_a_lone_angle_bracket_is_not_held_forever():
    assert stream_split(["Hello", " world"]) == ("", "Hello world")
    assert stream_split(["<", "b>bold</b>"]) == ("", "<b>bold</b>")
    assert stream_split(["<thi"]) == ("", "<thi")  # the stream ended: the held text is answer text


def test_text_before_a_think_tag_is_text():
    assert stream_split(["Answer first <think>x</think>"]) == ("", "Answer first <think>x</think>")


def test_implicit_open_missing_opening_tag():
    chunks = ["Pondering ", "without an open tag.", "</think>", "\n\nThe answer is 42."]
    assert stream_split(chunks, implicit=True) == ("Pondering without an open tag.", "The answer is 42.")


def test_implicit_open_with_explicit_tag_split_across_chunks():
    chunks = ["\n<thi", "nk>reason", "ing</thi", "nk>answer"]
    assert stream_split(chunks, implicit=True) == ("reasoning", "answer")


def test_implicit_open_never_closed_is_all_reasoning():
    assert stream_split(["still ", "thinking </thin"], implicit=True) == ("still thinking </thin", "")


def test_closing_tag_partial_suffix_is_released_when_not_a_tag():
    assert stream_split(["<think>a </t", "able> b</think>c"]) == ("a </table> b", "c")


def test_split_complete_forms():
    assert split_complete("<think>\nplan\n</think>\n\nanswer") == ("plan", "answer")
    assert split_complete("plan without open</think>\n\nanswer") == ("plan without open", "answer")
    assert split_complete("plain answer") == ("", "plain answer")
    assert split_complete("<think>unfinished") == ("unfinished", "")
    assert split_complete("a <think>b</think> c") == ("", "a <think>b</think> c")
