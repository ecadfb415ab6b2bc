"""Prediction request bodies read into arrays: JSON read straight from its bytes, and Monolith
``Example`` / ``ExampleBatch`` protobufs read by the project's own reader.

A request is held as :class:`~monolith.data.base.Rows`: per sparse feature int64 FIDs and offsets,
per dense feature float32 ``[examples, width]``, the features those of the model's receiver.

**JSON** (``{"sparse": {feature: [[fid, ...] per example]}, "dense": {name: [[x, ...] per
example]}}``) up to :data:`JSON_BYTES` is parsed by Python's ``json``, fastest for small bodies.
A larger one is not parsed into Python objects, which cost about 40 bytes per FID (a 32 MiB list
of FIDs took +504 MiB and 15 s): a regular expression checks each feature's list of lists against
JSON's grammar for numbers without copying it, then its numbers are converted by numpy a block of
about :data:`BLOCK_BYTES` at a time. Reading such a body costs its FIDs' int64s (8 bytes for a FID
that takes 2 to 21 bytes of JSON), its dense values' float32s and a few blocks. It must be in the
plain shape: an object of "sparse" and "dense", each an object of feature name -> list of lists of
numbers, keys without escapes, each key once; the error names the first problem found.

**Protobuf** bodies hold one serialized ``ExampleBatch`` (the default) or ``Example``
(``Content-Type: application/x-protobuf; message=Example``), read by
:class:`~monolith.data.pb_dataset.PBParser` as training reads them: ``fid_v1_list`` FIDs are
converted to v2, features the receiver does not name are ignored, a missing one is empty (zeros for
dense); a ``label`` or ``instance_weight`` feature is read as sent, like any other.
"""

from __future__ import annotations

import json
import re
import warnings
from typing import Any, Mapping

import numpy as np

from monolith.data.base import Rows, jagged
from monolith.data.pb_dataset import PBParser
from monolith.export.receiver import ServingInputReceiver
from monolith.serving.model import RequestError, parse_features

__all__ = ["BLOCK_BYTES", "JSON_BYTES", "PROTOBUF_MESSAGES", "TooManyExamples", "parse_json", "parse_protobuf",
           "protobuf_message"]

#: Numbers are converted this many bytes of JSON at a time (more where one number is longer).
BLOCK_BYTES = 256 << 10
#: JSON bodies up to this size are parsed by ``json`` (into Python objects of up to about 16x
#: their size), larger ones by the array reader.
JSON_BYTES = 64 << 10
#: ``message=`` values of an ``application/x-protobuf`` Content-Type.
PROTOBUF_MESSAGES = {"ExampleBatch": "example_batch", "Example": "example"}

_WS = rb"[ \t\n\r]*+"
_INT = rb"-?(?:0|[1-9][0-9]*+)"
_FLOAT = rb"-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][+\-]?+[0-9]++)?+"


def _lists_of(number: bytes) -> re.Pattern[bytes]:
    """JSON's grammar for a list of lists of ``number`` (possessive: nothing is retried, so a match
    keeps no state per element)."""
    row = rb"\[" + _WS + rb"(?:" + number + rb"(?:" + _WS + rb"," + _WS + number + rb")*+)?+" + _WS + rb"\]"
    return re.compile(rb"\[" + _WS + rb"(?:" + row + rb"(?:" + _WS + rb"," + _WS + row + rb")*+)?+" + _WS + rb"\]")


_LISTS = {"sparse": _lists_of(_INT), "dense": _lists_of(_FLOAT)}
_SPACE = re.compile(_WS)
_KEY = re.compile(rb'"([^"\\\x00-\x1f]*+)"' + _WS + rb":" + _WS)
# Separators become spaces for numpy; an integer's minus too (read from the bytes), so that numpy
# reads uint64 magnitudes and no FID overflows int64 on the way.
_SEPARATORS = {True: bytes.maketrans(b"[],-", b"    "), False: bytes.maketrans(b"[],", b"   ")}
_NOT_IN_NUMBERS = np.frombuffer(b"[], \t\n\r", dtype=np.uint8)
_UINT64_MAX = np.uint64(2**64 - 1)
_DIGIT_0, _DIGIT_9, _MINUS, _CLOSE = b"09-]"


class TooManyExamples(RequestError):
    """A request with more examples than allowed (HTTP 413)."""


def parse_json(body: bytes | bytearray, receiver: ServingInputReceiver, max_examples: int) -> Rows:
    """The request in a JSON ``body`` (module docstring).

    Raises:
        TooManyExamples: a feature has more than ``max_examples`` examples (checked first).
        RequestError: the body is no prediction request for ``receiver``: not JSON, unknown or
            missing features, a FID that is no integer in [-2**63, 2**64), a dense value that is no
            finite float32 number, a row of the wrong width, features with different numbers of
            examples (the message names the feature, and the element where it is known).
    """
    if len(body) > JSON_BYTES:
        return _read_plain(body, receiver, max_examples)
    try:
        request = json.loads(body)
    except ValueError as error:  # JSON and UTF-8 decoding errors
        raise RequestError(f"request body is not JSON: {error}") from None
    except RecursionError:
        raise RequestError("request body nests too deeply to parse as JSON") from None
    if not isinstance(request, dict):
        raise RequestError(f"request body must be a JSON object with 'sparse' and 'dense', "
                           f"got {type(request).__name__}")
    unknown = sorted(set(request) - {"sparse", "dense"})
    if unknown:
        raise RequestError(f"unknown request field(s) {unknown}; a request has 'sparse' and 'dense'")
    for kind in ("sparse", "dense"):
        features = request.get(kind)
        if isinstance(features, dict):
            for name, rows in features.items():
                if isinstance(rows, list):
                    _check_examples(f"{kind}['{name}']", len(rows), max_examples)
    return parse_features(receiver, request.get("sparse", {}), request.get("dense"))


def _check_examples(field: str, examples: int, limit: int) -> None:
    if examples > limit:
        raise TooManyExamples(f"{field} has {examples} examples; a request may have at most {limit} (--max-batch-size)")


def _read_plain(body: bytes | bytearray, receiver: ServingInputReceiver, max_examples: int) -> Rows:
    """:func:`parse_json` of a body in the plain shape: an object of at most "sparse" and "dense",
    each an object of feature name -> list of lists of numbers, keys without escapes."""
    spans: dict[str, dict[str, tuple[int, int]]] = {}
    pos = _expect(body, _SPACE.match(body).end(), b"{")
    while True:
        key, pos = _key(body, pos)
        if key not in ("sparse", "dense") or key in spans:
            raise _not_plain(f"unexpected request field {key!r}")
        spans[key] = {}
        pos = _expect(body, pos, b"{")
        while True:
            name, pos = _key(body, pos)
            match = _LISTS[key].match(body, pos)
            if match is None or name in spans[key]:
                raise _not_plain(f"{key}['{name}'] (byte {pos}) is not a list of lists of "
                                 f"{'integer FIDs' if key == 'sparse' else 'numbers'} in plain JSON")
            spans[key][name] = match.span()
            # Each row opens with the only bracket in it (the grammar).
            _check_examples(f"{key}['{name}']", body.count(b"[", *match.span()) - 1, max_examples)
            pos, more = _after(body, match.end(), b"}")
            if not more:
                break
        pos, more = _after(body, pos, b"}")
        if not more:
            break
    if pos != len(body):
        raise _not_plain(f"unexpected bytes after the request object (byte {pos})")
    sparse_spans, dense_spans = spans.get("sparse", {}), spans.get("dense", {})
    # The receiver's checks of feature names, with placeholders for the rows.
    parse_features(receiver, {name: [] for name in sparse_spans}, {name: [] for name in dense_spans})
    sparse, dense, sizes = {}, {}, {}
    for name, (start, end) in sparse_spans.items():
        ids, offsets = _numbers(body, start, end, integers=True, field=f"sparse['{name}']")
        sparse[name] = jagged(ids, np.diff(offsets))
        sizes[f"sparse['{name}']"] = offsets.size - 1
    for name, width in receiver.dense_features.items():
        field = f"dense['{name}']"
        values, offsets = _numbers(body, *dense_spans[name], integers=False, field=field)
        counts = np.diff(offsets)
        wrong = np.flatnonzero(counts != width)
        if wrong.size:
            raise RequestError(f"{field}[{wrong[0]}] must be a list of {width} numbers, got {counts[wrong[0]]} values")
        with np.errstate(over="ignore"):  # beyond float32: inf, refused below
            rows = values.astype(np.float32).reshape(counts.size, width)
        bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
        if bad.size:
            j = int(np.flatnonzero(~np.isfinite(rows[bad[0]]))[0])
            raise RequestError(f"{field}[{bad[0]}][{j}] must be a finite number within float32 range")
        dense[name] = rows
        sizes[field] = counts.size
    if len(set(sizes.values())) > 1:
        raise RequestError(f"features have different numbers of examples: {sizes}")
    return Rows(next(iter(sizes.values()), 0), sparse, dense)


def _not_plain(problem: str) -> RequestError:
    return RequestError(f"request body is not a prediction request that can be read: {problem}")


def _expect(body: bytes | bytearray, pos: int, char: bytes) -> int:
    if body[pos : pos + 1] != char:
        raise _not_plain(f"expected {char.decode()} at byte {pos}")
    return _SPACE.match(body, pos + 1).end()


def _key(body: bytes | bytearray, pos: int) -> tuple[str, int]:
    match = _KEY.match(body, pos)
    if match is None:
        raise _not_plain(f"expected a key without escapes at byte {pos}")
    try:
        return match.group(1).decode("utf-8"), match.end()
    except UnicodeDecodeError:
        raise _not_plain(f"the key at byte {pos} is not UTF-8") from None


def _after(body: bytes | bytearray, pos: int, close: bytes) -> tuple[int, bool]:
    """The position after a member's value and whether another member follows (a comma) or the
    object ends (``close``)."""
    pos = _SPACE.match(body, pos).end()
    if body[pos : pos + 1] == b",":
        return _SPACE.match(body, pos + 1).end(), True
    return _expect(body, pos, close), False


def _numbers(body: bytes | bytearray, start: int, end: int, integers: bool,
             field: str) -> tuple[np.ndarray, np.ndarray]:
    """The numbers of the list of lists in ``body[start:end]`` (already checked against the
    grammar) and the offsets of its rows: int64 FIDs (uint64 ones as their two's complement) or
    float64 values. Converted a block at a time, each ending after a comma or bracket."""
    values, closes = [], []
    done = 0  # numbers in the blocks before
    block_start = start
    while block_start < end:
        block_end = min(end, block_start + BLOCK_BYTES)
        if block_end < end:
            cut = max(body.rfind(b",", block_start, block_end), body.rfind(b"]", block_start, block_end))
            if cut < block_start:  # one number longer than a block: up to the comma after it
                cut = body.find(b",", block_end, end)
            block_end = cut + 1 if cut >= 0 else end
        block = bytes(body[block_start:block_end])
        chars = np.frombuffer(block, dtype=np.uint8)
        if integers:
            in_number = (chars >= _DIGIT_0) & (chars <= _DIGIT_9) | (chars == _MINUS)
        else:
            in_number = ~np.isin(chars, _NOT_IN_NUMBERS)
        first = np.flatnonzero(in_number & ~np.concatenate(([False], in_number[:-1])))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy warns, then stops, at text it cannot read
            try:  # (numpy refuses text of spaces alone)
                read = np.zeros(0) if first.size == 0 else np.fromstring(block.translate(_SEPARATORS[integers]),
                                     dtype=np.uint64 if integers else np.float64, sep=" ")
            except (ValueError, DeprecationWarning):
                raise _not_plain(f"{field} holds a number numpy cannot read") from None
        if read.size != first.size:
            raise _not_plain(f"{field} holds a number numpy cannot read")
        if integers:
            read = _fids(read, block, first, field, done)
        values.append(read)
        # The numbers before each closing bracket: the offsets of the rows, which follow one
        # another with nothing between them (the grammar).
        closes.append(done + np.searchsorted(first, np.flatnonzero(chars == _CLOSE)))
        done += first.size
        block_start = block_end
    offsets = np.concatenate([[0], *closes])[:-1]  # the list's own closing bracket dropped
    return np.concatenate(values), offsets.astype(np.int64)


def _fids(magnitudes: np.ndarray, block: bytes, first: np.ndarray, field: str, done: int) -> np.ndarray:
    """Int64 FIDs from the uint64 ``magnitudes`` read with minus signs blanked out; numpy reads a
    number beyond uint64 as its maximum, so those are read again from the bytes."""
    negative = np.frombuffer(block, dtype=np.uint8)[first] == _MINUS
    for k in np.flatnonzero(magnitudes == _UINT64_MAX):
        digits = re.match(rb"-?[0-9]+", block[first[k] : first[k] + 22]).group()
        if int(digits.lstrip(b"-")) != 2**64 - 1 or negative[k]:
            raise RequestError(f"{field} holds an integer outside [-2**63, 2**64) (number {done + k} of the feature)")
    too_negative = np.flatnonzero(negative & (magnitudes > np.uint64(2**63)))
    if too_negative.size:
        raise RequestError(f"{field} holds an integer outside [-2**63, 2**64) (number {done + too_negative[0]} of "
                           f"the feature)")
    with np.errstate(over="ignore"):
        return np.where(negative, np.uint64(0) - magnitudes, magnitudes).view(np.int64)


def parse_protobuf(body: bytes | bytearray, receiver: ServingInputReceiver, message: str, max_examples: int) -> Rows:
    """The request in a serialized ``ExampleBatch`` or ``Example`` (``message``) ``body``.

    Raises:
        TooManyExamples: more than ``max_examples`` examples.
        RequestError: an unknown ``message``, or a body that does not parse as one.
    """
    if message not in PROTOBUF_MESSAGES:
        raise RequestError(f"unknown protobuf message {message!r}; the Content-Type's message= is one of "
                           f"{sorted(PROTOBUF_MESSAGES)}")
    parser = PBParser(PROTOBUF_MESSAGES[message], sparse_features=receiver.sparse_features,
                      dense_features=dict(receiver.dense_features), line_id_fields=(), labels=False)
    rows, bad = parser.decode([(0, bytes(body))])
    if bad:
        raise RequestError(f"request body is not a serialized {message}: {bad[0][1]}")
    _check_examples(f"the {message}", rows.num, max_examples)
    dense = {name: rows.dense[name].reshape(rows.num, width).astype(np.float32, copy=False)
             for name, width in receiver.dense_features.items()}
    bad_dense = [name for name, values in dense.items() if not np.isfinite(values).all()]
    if bad_dense:
        raise RequestError(f"dense feature '{bad_dense[0]}' holds a value that is not finite")
    return Rows(rows.num, {name: rows.sparse[name] for name in receiver.sparse_features}, dense)


def protobuf_message(content_type: str) -> str | None:
    """The message of an ``application/x-protobuf`` Content-Type (default ``ExampleBatch``), or
    None for another type."""
    kind, *parameters = [part.strip() for part in content_type.split(";")]
    if kind.lower() != "application/x-protobuf":
        return None
    given: Mapping[str, Any] = dict(p.split("=", 1) for p in parameters if "=" in p)
    return str(given.get("message", "ExampleBatch")).strip('"')
