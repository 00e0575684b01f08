"""The wire codec (dmq_client.protocol): frames, limits, hostile bytes, receipts."""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmq_client import errors, protocol
from dmq_client.protocol import ErrorCode, FrameDecoder, ProtocolError

LIMIT = protocol.MIN_FRAME_LIMIT  # small limits keep the at-the-limit frames cheap
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_MORE = settings(FUZZ, max_examples=1000)
FUZZ_LESS = settings(FUZZ, max_examples=100)


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def decode_error(data: bytes, limit: int = LIMIT) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        FrameDecoder(limit).feed(data)
    return caught.value


# ---------------------------------------------------------------------------------------------- round trips

SAMPLES = [
    {},
    {"id": 0, "op": "send", "args": {"queue": "q", "messages": [{"body": b"\x00\xff" * 10}]}},
    {"dmq": 1, "token": None, "client": "t\u00e9st \U0001f600"},
    {"ints": [0, -1, 2**63 - 1, -2**63, 2**64 - 1], "floats": [0.5, -1e300, math.inf], "flags": [True, False]},
    {"nested": {"a": [{"b": [[], {}, [b""]]}]}, "": ""},
    {"big": b"x" * 100_000},
]


@pytest.mark.parametrize("message", SAMPLES)
def test_round_trip(message):
    data = protocol.encode(message)
    assert struct.unpack(">I", data[:4])[0] == len(data) - 4
    assert FrameDecoder().feed(data) == [message]


def test_bytes_stay_bytes_and_text_stays_text():
    [decoded] = FrameDecoder().feed(protocol.encode({"b": b"abc", "s": "abc"}))
    assert type(decoded["b"]) is bytes and type(decoded["s"]) is str


def test_byte_by_byte():
    data = b"".join(protocol.encode(m) for m in SAMPLES[:5])
    decoder = FrameDecoder()
    out = []
    for i in range(len(data)):
        out += decoder.feed(data[i:i + 1])
    assert out == SAMPLES[:5]
    assert decoder.buffered == 0


def test_partial_frame_waits_for_the_rest():
    data = protocol.encode(SAMPLES[1])
    decoder = FrameDecoder()
    assert decoder.feed(data[:3]) == []  # not even a header yet
    assert decoder.feed(data[3:-1]) == []
    assert decoder.buffered == len(data) - 1
    assert decoder.feed(data[-1:]) == [SAMPLES[1]]
    assert decoder.buffered == 0


def test_several_frames_in_one_chunk_and_a_split_tail():
    frames = [protocol.encode({"id": i}) for i in range(50)]
    chunk = b"".join(frames) + frames[0][:6]
    decoder = FrameDecoder()
    assert decoder.feed(chunk) == [{"id": i} for i in range(50)]
    assert decoder.buffered == 6
    assert decoder.feed(frames[0][6:]) == [{"id": 0}]


def _map_of_size(size: int) -> dict:
    """A map whose msgpack encoding is exactly `size` bytes."""
    for n in range(size - 40, size):  # a bin plus a short padding text: every size is reachable
        for pad in range(31):
            message = {"b": b"x" * n, "p": "y" * pad}
            if len(msgpack.packb(message, use_bin_type=True)) == size:
                return message
    raise AssertionError(f"no map of {size} bytes")


def test_frame_exactly_at_the_limit_is_accepted():
    message = _map_of_size(LIMIT)
    data = protocol.encode(message, LIMIT)
    assert len(data) == LIMIT + 4
    assert FrameDecoder(LIMIT).feed(data) == [message]


def test_frame_one_byte_over_the_limit():
    message = _map_of_size(LIMIT + 1)
    with pytest.raises(ProtocolError) as caught:
        protocol.encode(message, LIMIT)
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE
    # The decoder refuses it from the header alone, before the payload arrives.
    assert decode_error(struct.pack(">I", LIMIT + 1)).code is ErrorCode.FRAME_TOO_LARGE
    data = protocol.encode(message, LIMIT + 1)
    assert decode_error(data).code is ErrorCode.FRAME_TOO_LARGE
    assert FrameDecoder(LIMIT + 1).feed(data) == [message]


def test_default_limit():
    assert FrameDecoder().max_frame_bytes == protocol.DEFAULT_MAX_FRAME_BYTES == 4 << 20
    err = decode_error(struct.pack(">I", (4 << 20) + 1), 4 << 20)
    assert err.code is ErrorCode.FRAME_TOO_LARGE


def test_huge_declared_length():
    assert decode_error(b"\xff\xff\xff\xff").code is ErrorCode.FRAME_TOO_LARGE
    assert decode_error(b"\x80\x00\x00\x00" + b"\x80").code is ErrorCode.FRAME_TOO_LARGE


@pytest.mark.parametrize("payload", [
    b"\x90",  # []
    b"\xa3abc",  # "abc"
    b"\x01",  # 1
    b"\xc0",  # nil
    b"\xc3",  # true
    b"\xc4\x01x",  # bin
    b"\xcb" + struct.pack(">d", 1.5),  # float
    b"\xd4\x05\x00",  # ext
], ids=["array", "str", "int", "nil", "bool", "bin", "float", "ext"])
def test_payload_that_is_not_a_map(payload):
    err = decode_error(frame(payload))
    assert err.code is ErrorCode.PROTOCOL_ERROR
    assert "map" in err.message


@pytest.mark.parametrize("payload", [
    b"",  # empty frame
    b"\xc1",  # the one never-used msgpack byte
    b"\x81\xa1a",  # truncated: a map missing its value
    b"\x82\xa1a\x01",  # truncated: one of two entries
    b"\xdb\x00\x00\x00\x10abc",  # str32 declaring more than the frame holds
    b"\x80\x80",  # trailing bytes after the map
    b"\x81\xa2\xff\xfe\x01",  # key that is not UTF-8
    b"\x81\xa1a\xa3\xed\xa0\x80",  # value that is an encoded surrogate (invalid UTF-8)
    b"\x81\x01\x02",  # an integer key
    b"\x81\x90\x01",  # an array key
    b"\xdf\xff\xff\xff\xff",  # map32 declaring 4 G entries
    b"\x81\xa1a\xdd\xff\xff\xff\xff",  # array32 declaring 4 G entries
    b"\x81\xa1a\xc6\xff\xff\xff\xff",  # bin32 declaring 4 GiB
    b"\x81\xa1a\xd6\xff\x00",  # truncated timestamp ext
    b"\x81\xa1a\xc7\x03\xff\x00\x00\x00",  # timestamp ext with an invalid length
], ids=["empty", "c1", "missing-value", "missing-entry", "str-overrun", "trailing", "key-utf8", "value-surrogate",
        "int-key", "array-key", "map32", "array32", "bin32", "ext-truncated", "timestamp-length"])
def test_invalid_payload_is_a_protocol_error(payload):
    assert decode_error(frame(payload)).code is ErrorCode.PROTOCOL_ERROR


@pytest.mark.parametrize("prefix", [b"\x91", b"\x81\xa1a"], ids=["arrays", "maps"])
def test_deep_nesting_is_a_protocol_error(prefix):
    depth = 100_000
    payload = b"\x81\xa1a" + prefix * depth + b"\xc0"
    assert len(payload) < 4 << 20
    assert decode_error(frame(payload), 4 << 20).code is ErrorCode.PROTOCOL_ERROR


def test_moderate_nesting_decodes():
    payload = b"\x81\xa1a" + b"\x91" * 500 + b"\xc0"
    [decoded] = FrameDecoder().feed(frame(payload))
    value, depth = decoded["a"], 0
    while isinstance(value, list):
        value, depth = value[0], depth + 1
    assert depth == 500 and value is None


def test_good_frames_before_a_bad_one_do_not_hide_the_error():
    data = protocol.encode({"id": 1}) + frame(b"\x90")
    assert decode_error(data).code is ErrorCode.PROTOCOL_ERROR


def test_decoder_refuses_a_limit_below_the_minimum():
    with pytest.raises(AssertionError):
        FrameDecoder(protocol.MIN_FRAME_LIMIT - 1)


# ---------------------------------------------------------------------------------------------- fuzzing

@st.composite
def chunkings(draw, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def _feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> list:
    out = []
    try:
        for chunk in chunks:
            out += decoder.feed(chunk)
    except ProtocolError as exc:
        assert exc.code in (ErrorCode.PROTOCOL_ERROR, ErrorCode.FRAME_TOO_LARGE)
        assert isinstance(exc.message, str) and exc.message
    return out


# Bytes that look like frames: a valid header over arbitrary bytes, so the payload reaches msgpack.
framed = st.binary(max_size=300).map(frame)
stream = st.lists(st.one_of(framed, st.binary(max_size=40)), max_size=6).map(b"".join)


@FUZZ_MORE
@given(st.data(), stream)
def test_fuzz_decoder_raises_only_protocol_error(data, raw):
    chunks = data.draw(chunkings(raw))
    for message in _feed_all(FrameDecoder(LIMIT), chunks):
        assert isinstance(message, dict)
        assert all(isinstance(key, (str, bytes)) for key in message)


values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
maps = st.dictionaries(st.text(max_size=8), values, max_size=5)


@FUZZ_LESS
@given(st.data(), st.lists(maps, min_size=1, max_size=4))
def test_fuzz_round_trip_under_any_chunking(data, messages):
    raw = b"".join(protocol.encode(m) for m in messages)
    chunks = data.draw(chunkings(raw))
    decoder = FrameDecoder()
    out = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    assert out == messages
    assert decoder.buffered == 0


# ---------------------------------------------------------------------------------------------- receipts and shapes

@FUZZ
@given(st.integers(0, 2**63 - 1), st.integers(0, 2**16 - 1), st.integers(1, 2**63 - 1), st.integers(1, 2**32 - 1))
def test_receipt_round_trip(queue_id, partition, sequence, count):
    text = protocol.receipt(queue_id, partition, sequence, count)
    assert protocol.parse_receipt(text) == (queue_id, partition, sequence, count)


@FUZZ
@given(st.one_of(st.text(max_size=100), st.text(alphabet="0123456789.", max_size=90), st.binary(max_size=30),
                 st.integers(), st.floats(), st.none(), st.lists(st.text(max_size=5), max_size=4)))
def test_parse_receipt_never_raises(value):
    parsed = protocol.parse_receipt(value)
    if parsed is not None:
        assert isinstance(value, str)
        assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+", value)
        assert len(parsed) == 4 and all(type(part) is int for part in parsed)
        assert parsed[2] >= 1 and parsed[3] >= 1


@pytest.mark.parametrize("text", [
    "", "1.2.3", "1.2.3.4.5", "1..3.4", ".1.2.3", "1.2.3.", "1.2.0.4", "1.2.3.0", "1.65536.3.4",
    f"{2**63}.0.1.1", f"1.0.{2**63}.1", f"1.0.1.{2**32}", "-1.0.1.1", "+1.0.1.1", " 1.0.1.1", "1.0.1.1\n",
    "1_0.0.1.1", "\u0661.0.1.1", "\u00b9.0.1.1", "1.0.1.1" + "0" * 80, "0x1.0.1.1", "a.b.c.d",
], ids=repr)
def test_parse_receipt_rejects(text):
    assert protocol.parse_receipt(text) is None


@pytest.mark.parametrize("value", [None, 1, b"1.0.1.1", ["1", "0", "1", "1"], ("1.0.1.1",), 1.5])
def test_parse_receipt_rejects_non_text(value):
    assert protocol.parse_receipt(value) is None


def test_receipt_limits_are_inclusive():
    edge = protocol.receipt(2**63 - 1, 2**16 - 1, 2**63 - 1, 2**32 - 1)
    assert len(edge) <= 80
    assert protocol.parse_receipt(edge) == (2**63 - 1, 2**16 - 1, 2**63 - 1, 2**32 - 1)
    assert protocol.parse_receipt("0.0.1.1") == (0, 0, 1, 1)


def test_message_id():
    assert protocol.message_id(3, 17) == "3.17"
    assert protocol.parse_message_id("3.17") == (3, 17)
    edge = protocol.message_id(2**16 - 1, 2**63 - 1)
    assert protocol.parse_message_id(edge) == (2**16 - 1, 2**63 - 1)


@pytest.mark.parametrize("text", ["", "3", "3.", ".17", "3.0", "3.17.1", "-3.17", "3.-17", " 3.17", "3.17\n",
                                  "\u0663.17", "65536.1", f"0.{2**63}", "3_0.1", "a.b", None, 3, b"3.17", 3.17])
def test_parse_message_id_rejects(text):
    assert protocol.parse_message_id(text) is None


def test_message_shapes():
    assert protocol.hello("t", "c") == {"dmq": protocol.VERSION, "token": "t", "client": "c"}
    assert protocol.request(5, "op", {"a": 1}) == {"id": 5, "op": "op", "args": {"a": 1}}
    assert protocol.result(5, [1]) == {"id": 5, "result": [1]}
    assert protocol.error(5, ErrorCode.NOT_LEADER, "m", "h:1") == \
        {"id": 5, "error": {"code": "NotLeader", "message": "m", "leader": "h:1"}}
    assert protocol.error(5, ErrorCode.INTERNAL, "m") == {"id": 5, "error": {"code": "Internal", "message": "m"}}
    assert protocol.error(None, "ProtocolError", "m") == {"error": {"code": "ProtocolError", "message": "m"}}


# ---------------------------------------------------------------------------------------------- error codes

@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_code_has_its_client_exception(code):
    exc = errors.error_from({"code": code.value, "message": "m", "leader": "h:1"})
    assert exc.code is code and exc.message == "m" and exc.leader == "h:1"
    assert exc.retryable == (code in protocol.RETRYABLE)


def test_error_from_malformed_bodies():
    assert isinstance(errors.error_from("nope"), errors.ProtocolViolation)
    assert isinstance(errors.error_from({"code": "NoSuchCode"}), errors.InternalError)
    assert errors.error_from({"code": "NotLeader", "message": "m", "leader": 5}).leader is None


def test_protocol_doc_lists_every_error_code():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text()
    table = doc.split("## Error codes", 1)[1]
    rows = dict(re.findall(r"^\| `(\w+)` \|.*\| (\w+) \|$", table, re.M))
    assert set(rows) == {code.value for code in ErrorCode}
    assert {code for code, retry in rows.items() if retry == "yes"} == {code.value for code in protocol.RETRYABLE}
