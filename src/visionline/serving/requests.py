"""From what TorchServe hands a handler to the bytes of one image, or a precise 4xx.

TorchServe 0.12's frontend turns each HTTP request into a row of named fields before
the worker sees it, and the content type decides how:

- most content types (none, ``application/octet-stream``, ``image/*``...): one field
  ``body`` with the raw bytes. ``application/json`` arrives already parsed (the raw
  bytes when the JSON is malformed); ``text/*`` arrives as ``str`` (bytes when not
  UTF-8);
- ``multipart/form-data``: one field per part, named by the part; a file part's own
  content type is listed in the request headers under the part's name;
- ``application/x-www-form-urlencoded`` (what ``curl -d``/``--data-binary`` and
  Python's urllib send by default): Netty parses the body as ``name=value`` pairs.
  Names are decoded as UTF-8 (invalid bytes replaced), ``+`` becomes a space, ``%XX``
  is decoded, parsing stops at the first line break, and text without ``=`` or ``&``
  is dropped. Binary image bytes do not survive this, so such a request gets a 415
  that names the content type and the fix; base64 text sent that way is recovered.
  Behind our front (``serving.nginx``, locally and in the pod) this never happens: the
  front forwards such a body unparsed as ``application/octet-stream`` and names the
  client's content type in ``X-Visionline-Sent-As``; the body is then an image as sent,
  or a form parsed here, correctly.

gRPC requests arrive as the ``input`` map's fields (``data``).

Status codes: 413 for an image over ``max_request_bytes``, 415 for a body whose
content type destroyed it, 400 for everything else that is not an image.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from visionline.data.images import (
    DEFAULT_MAX_ASPECT_RATIO,
    DEFAULT_MAX_RESIZED_PIXELS,
)

FORM_URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
# Set by our front when it forwarded a form-encoded body unparsed (serving.nginx).
SENT_AS_HEADER = "X-Visionline-Sent-As"
_HOW_TO_SEND = (
    "send the image as the raw body with its own content type "
    "(curl -H 'Content-Type: application/octet-stream' --data-binary @image.png URL), "
    'as one multipart file (curl -F file=@image.png URL), or as JSON {"data": "<base64>"}'
)
# How much of the client's own text an error quotes: one name, and all names together.
# Enough to recognise a typo; never the request echoed back (200,000 JSON keys once made
# a 1.7 MB 400), so every error stays a few hundred bytes.
QUOTE_CHARS = 40
LIST_CHARS = 160
# The most any error message says, whatever quoted it (the handler's last guard).
ERROR_CHARS = 700
# The first bytes of every format decode_image accepts.
_SIGNATURES = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",  # JPEG, MPO
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
)
_WHITESPACE = re.compile(rb"\s+")
_DATA_URI = re.compile(rb"^data:[\w.+/-]*;base64,", re.IGNORECASE)


class RequestError(ValueError):
    """A request that carries no usable image; ``status`` is the HTTP code to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def header(headers: Mapping[str, Any], name: str) -> str:
    """A request header's value, case-insensitively; '' when absent.

    TorchServe mixes per-part entries (dicts, keyed by the part's name) into the
    request headers: those are not headers and never match."""
    name = name.lower()
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name and isinstance(value, str):
            return value
    return ""


def media_type(headers: Mapping[str, Any]) -> str:
    """``Content-Type`` without its parameters, lower case."""
    return header(headers, "content-type").split(";", 1)[0].strip().lower()


def wants_explanation(headers: Mapping[str, Any]) -> bool:
    """TorchServe marks each request to ``/explanations/<model>`` with ``explain: True``."""
    return header(headers, "explain") == "True"


def quoted(text: object, budget: int = QUOTE_CHARS) -> str:
    """Client-supplied text (a field name, a content type) as an error may quote it:
    printable ASCII on one line, at most ``budget`` characters and a count of the rest.

    Line breaks, control characters (terminal escapes included) and non-ASCII are
    written as Python escapes (``\\r``, ``\\x1b``, ``\\u732b``), so the text can neither
    forge log lines nor break a protocol that frames it. Printable ASCII, the backslash
    too, is kept as is: quoting quoted text again changes nothing but its length."""
    text = text if isinstance(text, str) else str(text)
    out: list[str] = []
    used = 0
    for i, ch in enumerate(text):  # stops at the budget: a 100 MB name costs no more
        shown = ch if " " <= ch <= "~" else ch.encode("unicode_escape").decode("ascii")
        if used + len(shown) > budget:
            return "".join(out) + f"... ({len(text) - i} more characters)"
        out.append(shown)
        used += len(shown)
    return "".join(out)


def quoted_names(names: Iterable[object], count: int, budget: int = LIST_CHARS) -> str:
    """``count`` client-supplied names, in the order sent, each ``quoted``, as many as
    fit in ``budget`` characters, then how many more there were ('none' for none)."""
    shown: list[str] = []
    used = 0
    for name in names:  # in the order sent: sorting 200,000 names to show five is waste
        q = quoted(name)
        if shown and used + len(q) > budget:
            break
        shown.append(q)
        used += len(q) + 2
    more = count - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "") or "none"


def status_phrase(status: int) -> str:
    """The HTTP reason phrase for ``status``: the standard one, never the message.

    TorchServe makes the phrase a handler sets the status line, which clients and
    proxies log and some show; the message quotes the client, so it stays in the JSON
    body. A fixed phrase is also printable ASCII, which TorchServe 0.12 needs: its
    worker frames the phrase with its length in characters but writes it as UTF-8, so
    a non-ASCII phrase desynchronises the frontend, which kills the worker."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_message(error: Exception) -> str:
    """What the answer says of a refused request: the error's message, bounded even
    where a library's message (Pillow's, json's) quoted more than we meant to."""
    return quoted(str(error), ERROR_CHARS)


def looks_like_image(data: bytes) -> bool:
    """True when ``data`` starts like a JPEG, PNG, GIF, BMP, TIFF or WebP file."""
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def decode_limits(serving: Mapping[str, Any], target_short_edge: int) -> dict[str, Any]:
    """``decode_image``'s keyword limits from an archive's ``serving.json``; archives
    packaged before a limit existed get its default."""
    return {
        "max_pixels": int(serving["max_image_pixels"]),
        "max_aspect_ratio": float(serving.get("max_aspect_ratio", DEFAULT_MAX_ASPECT_RATIO)),
        "max_resized_pixels": int(serving.get("max_resized_pixels", DEFAULT_MAX_RESIZED_PIXELS)),
        "target_short_edge": target_short_edge,
    }


def _too_large(size: int, max_bytes: int, what: str) -> RequestError:
    return RequestError(
        f"{what} is {size} bytes, over the limit of {max_bytes} bytes per image "
        "(serve.max_request_bytes)",
        413,
    )


def _b64decode(text: bytes | str, what: str, max_bytes: int, form: bool = False) -> bytes:
    """Strict base64, tolerating line breaks and a ``data:`` URI prefix. ``form``: the
    text came through form decoding, which turned every '+' into a space."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    if form:
        raw = raw.replace(b" ", b"+")
    raw = _DATA_URI.sub(b"", _WHITESPACE.sub(b"", raw))
    if len(raw) > (max_bytes + 2) // 3 * 4:
        raise _too_large(len(raw) // 4 * 3, max_bytes, f"the image in {what}")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(f"{what} is not valid base64: {e}") from e


def _from_json(value: Any, what: str, max_bytes: int, form: bool = False) -> bytes:
    if not isinstance(value, dict):
        raise RequestError(
            f'{what} is a JSON {type(value).__name__}: expected {{"data": "<base64 image>"}}'
        )
    encoded = value.get("data", value.get("b64"))
    if not isinstance(encoded, str):
        keys = quoted_names(value, len(value))
        raise RequestError(
            f'JSON body must be {{"data": "<base64-encoded image>"}} (keys sent: {keys})'
        )
    return _b64decode(encoded, f"JSON field 'data' of {what}", max_bytes, form)


def _from_text(text: str | bytes, what: str, max_bytes: int, form: bool = False) -> bytes:
    """A text payload: a JSON object, or base64 (with or without a data: URI prefix)."""
    stripped = text.strip()
    if stripped[:1] in ("{", b"{", "[", b"["):
        try:
            parsed = json.loads(stripped)
        except RecursionError as e:  # [[[[...]]]]: nesting deeper than Python's stack
            raise RequestError(f"malformed JSON in {what}: nested too deeply") from e
        except ValueError as e:
            raise RequestError(f"malformed JSON in {what}: {e}") from e
        return _from_json(parsed, what, max_bytes, form)
    return _b64decode(stripped, what, max_bytes, form)


def _from_bytes(data: bytes, what: str, ctype: str, max_bytes: int) -> bytes:
    if looks_like_image(data):
        if len(data) > max_bytes:
            raise _too_large(len(data), max_bytes, what)
        return data
    if ctype == "application/json" or data.lstrip()[:1] == b"{":
        return _from_text(data, what, max_bytes)  # TorchServe could not parse it
    if not data:
        raise RequestError(f"empty request ({what} has 0 bytes): {_HOW_TO_SEND}")
    try:  # base64 text sent as bytes (a gRPC client's, a .b64 file): an image inside?
        decoded = _b64decode(data, what, max_bytes)
    except RequestError as e:
        if e.status == 413:
            raise
        decoded = b""
    if looks_like_image(decoded):
        return decoded
    if len(data) > max_bytes:
        raise _too_large(len(data), max_bytes, what)
    return data  # not an image: decode_image says what it is not


def _from_value(value: Any, what: str, ctype: str, max_bytes: int) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return _from_bytes(bytes(value), what, ctype, max_bytes)
    if isinstance(value, str):  # a text/* body, or a JSON string
        if not value.strip():
            raise RequestError(f"empty request ({what} is blank text): {_HOW_TO_SEND}")
        try:
            return _from_text(value, what, max_bytes)
        except RequestError as e:
            if e.status == 413:
                raise
            raise RequestError(
                f"{what} is text ({quoted(ctype) or 'no content type'}) that is neither base64 nor "
                f'JSON {{"data": ...}}: {e}; {_HOW_TO_SEND}'
            ) from e
    return _from_json(value, what, max_bytes)  # parsed JSON (application/json)


def _image_in_form(row: Mapping[str, Any], max_bytes: int) -> bytes | None:
    """The image in a form's one field (``data=<base64>``), in base64 or JSON text that
    form decoding split at its first '=', or None."""
    candidates: list[bytes] = []
    if len(row) == 1:
        ((name, value),) = row.items()
        if isinstance(value, str):
            value = value.encode()
        value = bytes(value) if isinstance(value, (bytes, bytearray)) else b""
        if value:  # data=<base64>
            candidates.append(value)
        # JSON, or bare base64 with its padding: split at the first '=' into a name
        # and a value; joining them again restores the text.
        candidates.append(str(name).encode() + (b"=" + value if value else b""))
    for text in candidates:
        try:
            data = _from_text(text, "the form-encoded body", max_bytes, form=True)
        except RequestError as e:
            if e.status == 413:
                raise
            continue
        if looks_like_image(data):
            return data
    return None


def _form_urlencoded(row: Mapping[str, Any], headers: Mapping[str, Any], max_bytes: int) -> bytes:
    """Recover base64 or JSON text from a form TorchServe parsed, or say why we cannot."""
    data = _image_in_form(row, max_bytes)
    if data is not None:
        return data
    length = quoted(header(headers, "content-length") or "unknown", 20)
    fields = quoted_names(row, len(row))
    raise RequestError(
        f"the body ({length} bytes) was sent as {FORM_URLENCODED}, curl's default for "
        "-d/--data-binary and urllib's for a bytes body: TorchServe parsed it as form "
        f"fields (found: {fields}) and the image bytes did not survive. Instead, "
        f"{_HOW_TO_SEND}",
        415,
    )


def _forwarded_form(row: Mapping[str, Any], max_bytes: int) -> bytes:
    """A form-encoded body our front forwarded unparsed: an image as sent (``curl
    --data-binary @image.png``), or a form whose one field is the image in base64."""
    body = row.get("body")
    data = body.encode() if isinstance(body, str) else bytes(body or b"")
    what = f"the request body (sent as {FORM_URLENCODED})"
    if looks_like_image(data):
        if len(data) > max_bytes:
            raise _too_large(len(data), max_bytes, what)
        return data
    if not data.strip():
        raise RequestError(f"empty request ({what} has 0 bytes): {_HOW_TO_SEND}")
    try:
        text = data.decode("latin-1")  # any bytes; %XX escapes are decoded as UTF-8
        fields = dict(parse_qsl(text, keep_blank_values=True, max_num_fields=16))
    except ValueError as e:  # more fields than any request of ours has
        raise RequestError(f"{what} is not an image, and as a form: {e}; {_HOW_TO_SEND}") from e
    image = _image_in_form(fields, max_bytes)
    if image is None:
        raise RequestError(
            f"{what} is neither an image nor a form whose one field is the image in "
            f"base64 (data=<base64>): {_HOW_TO_SEND}"
        )
    return image


def _multipart_part(row: Mapping[str, Any], headers: Mapping[str, Any]) -> str:
    """The one part that holds the image: the only part, the only file part, or 'data'."""
    if len(row) == 1:
        return next(iter(row))
    files = [
        name
        for name in row
        if isinstance(headers.get(name), dict) and headers[name].get("content-type")
    ]
    if len(files) == 1:
        return files[0]
    if "data" in row:
        return "data"
    names = quoted_names(row, len(row))
    kind = f"{len(files)} file parts" if files else "no file part"
    raise RequestError(
        f"multipart upload with {len(row)} parts ({names}) and {kind}: send one image per "
        "request as a single file part, e.g. curl -F file=@image.png URL"
    )


def image_bytes(row: Mapping[str, Any], headers: Mapping[str, Any], max_bytes: int) -> bytes:
    """The image bytes one request carries, or a RequestError with the status to answer.

    ``row`` is the request's entry in the batch TorchServe hands ``handle()``;
    ``headers`` is ``context.get_all_request_header(idx)``. Nothing is decoded here
    beyond base64: ``decode_image`` checks the image itself.
    """
    ctype = media_type(headers)
    fields = {k: v for k, v in row.items() if v is not None}
    sent_as = header(headers, SENT_AS_HEADER).split(";", 1)[0].strip().lower()
    if sent_as == FORM_URLENCODED and ctype == "application/octet-stream":
        return _forwarded_form(fields, max_bytes)
    if ctype == FORM_URLENCODED:
        return _form_urlencoded(fields, headers, max_bytes)
    if not fields:
        raise RequestError(f"empty request: {_HOW_TO_SEND}")
    if ctype == MULTIPART:
        name = _multipart_part(fields, headers)
        what = f"multipart part '{quoted(name)}'"
    elif len(fields) == 1:
        name = next(iter(fields))
        what = "the request body" if name == "body" else f"field '{quoted(name)}'"
    else:  # gRPC inputs or query parameters beside the body: the image is data or body
        name = next((n for n in ("data", "body") if n in fields), "")
        if not name:
            names = quoted_names(fields, len(fields))
            raise RequestError(f"request with fields {names} and none named 'data': {_HOW_TO_SEND}")
        what = f"field '{quoted(name)}'"
    return _from_value(fields[name], what, ctype, max_bytes)
