"""Request rows, shaped as TorchServe 0.12 hands them to a handler, to image bytes.

The shapes (field names, per-part header entries, what form decoding leaves) are the
ones the real frontend produced for these requests; tests/integration/test_hostile_requests.py
sends the same requests to the real server.
"""

import base64
import json
from http import HTTPStatus

import pytest

from tests.support.faults import png_bytes
from visionline.serving.requests import (
    SENT_AS_HEADER,
    RequestError,
    error_message,
    image_bytes,
    looks_like_image,
    media_type,
    quoted,
    quoted_names,
    status_phrase,
    wants_explanation,
)

PNG = png_bytes(8, 8, seed=1)
B64 = base64.b64encode(PNG).decode()
LIMIT = 1 << 20


def _headers(ctype: str | None = None, **extra) -> dict:
    h = {"Accept": "*/*", "explain": "False", "url_path": "", "Content-Length": "125", **extra}
    if ctype:
        h["Content-Type"] = ctype
    return h


def test_raw_bytes_under_any_content_type_that_keeps_them():
    for ctype in (None, "application/octet-stream", "image/png", "image/jpeg", "text/plain"):
        row = {"body": PNG}  # text/plain: not UTF-8, so TorchServe forwards the bytes
        assert image_bytes(row, _headers(ctype), LIMIT) == PNG, ctype
    # TorchServe could not parse it as JSON, so it forwards the bytes: still an image
    assert image_bytes({"body": PNG}, _headers("application/json"), LIMIT) == PNG


def test_json_forms():
    parsed = {"body": {"data": B64}}  # application/json arrives parsed
    assert image_bytes(parsed, _headers("application/json"), LIMIT) == PNG
    assert image_bytes({"body": {"b64": B64}}, _headers("application/json"), LIMIT) == PNG
    wrapped = "\n".join(B64[i : i + 76] for i in range(0, len(B64), 76))  # `base64` output
    assert image_bytes({"body": {"data": wrapped}}, _headers("application/json"), LIMIT) == PNG
    uri = {"data": "data:image/png;base64," + B64}
    assert image_bytes({"body": uri}, _headers("application/json"), LIMIT) == PNG
    # JSON sent without a content type arrives as bytes
    raw_json = json.dumps({"data": B64}).encode()
    assert image_bytes({"body": raw_json}, _headers(), LIMIT) == PNG
    # base64 as a text/plain body, and as bytes
    assert image_bytes({"body": B64}, _headers("text/plain"), LIMIT) == PNG
    assert image_bytes({"body": B64.encode()}, _headers(), LIMIT) == PNG


@pytest.mark.parametrize(
    "row,ctype,message",
    [
        ({"body": b'{"data": '}, "application/json", "malformed JSON"),
        ({"body": b"[" * 100_000}, "application/json", "nested too deeply"),
        ({"body": {"image": B64}}, "application/json", "keys sent: image"),
        ({"body": [1, 2]}, "application/json", "is a JSON list"),
        ({"body": {"data": "***"}}, "application/json", "not valid base64"),
        ({"body": "hello there"}, "text/plain", "neither base64 nor JSON"),
        ({"body": "   "}, "text/plain", "blank text"),
        ({"body": b""}, None, "0 bytes"),
        ({}, None, "empty request"),
    ],
)
def test_bad_bodies_get_a_400_that_says_why(row, ctype, message):
    with pytest.raises(RequestError, match=message) as e:
        image_bytes(row, _headers(ctype), LIMIT)
    assert e.value.status == 400


def test_bytes_that_are_no_image_are_passed_on_for_decode_image_to_name():
    assert image_bytes({"body": b"hello, world"}, _headers(), LIMIT) == b"hello, world"


def test_multipart_single_file_under_any_field_name():
    ctype = "multipart/form-data; boundary=----x"
    for name in ("file", "image", "data", "upload"):
        headers = _headers(ctype, **{name: {"content-type": "image/png"}})
        assert image_bytes({name: PNG}, headers, LIMIT) == PNG
    # a file part beside plain fields: the file is the image
    headers = _headers(ctype, file={"content-type": "image/png"}, note={"content-type": ""})
    assert image_bytes({"file": PNG, "note": b"hello"}, headers, LIMIT) == PNG
    # base64 in a plain field
    headers = _headers(ctype, data={"content-type": ""})
    assert image_bytes({"data": B64.encode()}, headers, LIMIT) == PNG


def test_multipart_that_is_not_one_image_says_what_was_expected():
    ctype = "multipart/form-data; boundary=----x"
    two = _headers(ctype, a={"content-type": "image/png"}, b={"content-type": "image/png"})
    with pytest.raises(RequestError, match=r"2 parts \(a, b\) and 2 file parts.*curl -F"):
        image_bytes({"a": PNG, "b": PNG}, two, LIMIT)
    none = _headers(ctype, a={"content-type": ""}, b={"content-type": ""})
    with pytest.raises(RequestError, match="no file part"):
        image_bytes({"a": b"x", "b": b"y"}, none, LIMIT)


FORM = "application/x-www-form-urlencoded"


def test_form_encoded_binary_gets_a_415_naming_the_fix():
    # What TorchServe hands over for `curl --data-binary @digit.png`: no field at all
    # (no '=' or '&' in these bytes), only the headers.
    with pytest.raises(RequestError) as e:
        image_bytes({}, _headers(FORM), LIMIT)
    assert e.value.status == 415
    message = str(e.value)
    assert "125 bytes" in message and FORM in message
    assert "Content-Type: application/octet-stream" in message and "curl -F file=@" in message
    # bytes with '=' in them: a mangled name and a value, equally unusable
    with pytest.raises(RequestError) as e:
        image_bytes({"\ufffdPNG\r\n\x1a\n": b"\x01\x02"}, _headers(FORM), LIMIT)
    assert e.value.status == 415


def test_form_encoded_base64_is_recovered():
    # curl -d "data=$(base64 -w0 digit.png)": Netty turned each '+' into a space
    mangled = B64.replace("+", " ").encode()
    assert "+" in B64  # the case is real for this image
    assert image_bytes({"data": mangled}, _headers(FORM), LIMIT) == PNG
    # curl -d '{"data": "..."}' and curl -d "$(base64 -w0 digit.png)": split at the
    # first '=' (base64 padding) into a name and a value
    assert B64.endswith("==")
    for text in (json.dumps({"data": B64}), B64):
        name, _, value = text.replace("+", " ").partition("=")
        assert image_bytes({name: value.encode()}, _headers(FORM), LIMIT) == PNG


def _forwarded(sent_as: str = FORM) -> dict:
    # What our front (serving.nginx) hands TorchServe for a form-encoded body
    return {**_headers("application/octet-stream"), SENT_AS_HEADER: sent_as}


def test_a_form_body_our_front_forwarded_is_read_as_sent():
    # curl --data-binary @digit.png through the front: the image, byte for byte
    assert image_bytes({"body": PNG}, _forwarded(), LIMIT) == PNG
    assert image_bytes({"body": PNG}, _forwarded(FORM + "; charset=utf-8"), LIMIT) == PNG
    # curl -d "data=$(base64 -w0 digit.png)": '+' left unescaped, as curl sends it
    assert image_bytes({"body": ("data=" + B64).encode()}, _forwarded(), LIMIT) == PNG
    # curl --data-urlencode "data@digit.b64": escaped properly
    escaped = "data=" + B64.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    assert image_bytes({"body": escaped.encode()}, _forwarded(), LIMIT) == PNG
    # JSON or bare base64 sent as a form
    for text in (json.dumps({"data": B64}), B64):
        assert image_bytes({"body": text.encode()}, _forwarded(), LIMIT) == PNG


def test_a_forwarded_form_that_holds_no_image_gets_a_400_that_says_so():
    for body in (b"name=value&other=thing", b"data=bm90IGFuIGltYWdl", b"\x00\x01binary"):
        with pytest.raises(RequestError) as e:
            image_bytes({"body": body}, _forwarded(), LIMIT)
        assert e.value.status == 400 and "neither an image nor a form" in str(e.value)
    with pytest.raises(RequestError, match="0 bytes"):
        image_bytes({"body": b""}, _forwarded(), LIMIT)
    many = "&".join(f"f{i}=x" for i in range(40)).encode()
    with pytest.raises(RequestError, match="as a form"):
        image_bytes({"body": many}, _forwarded(), LIMIT)
    big = PNG[:8] + b"\0" * 2000
    with pytest.raises(RequestError) as e:
        image_bytes({"body": big}, _forwarded(), 1024)
    assert e.value.status == 413
    # the header alone changes nothing for a body TorchServe parsed itself
    with pytest.raises(RequestError) as e:
        image_bytes({}, {**_headers(FORM), SENT_AS_HEADER: FORM}, LIMIT)
    assert e.value.status == 415


def test_size_limits_answer_413():
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * 2000
    with pytest.raises(RequestError, match=r"2008 bytes, over the limit of 1024") as e:
        image_bytes({"body": big}, _headers(), 1024)
    assert e.value.status == 413
    encoded = base64.b64encode(big).decode()
    with pytest.raises(RequestError, match="over the limit of 1024") as e:
        image_bytes({"body": {"data": encoded}}, _headers("application/json"), 1024)
    assert e.value.status == 413
    # an image at the limit passes
    assert image_bytes({"body": big}, _headers(), len(big)) == big


def test_grpc_and_extra_fields():
    assert image_bytes({"data": PNG}, {}, LIMIT) == PNG  # gRPC input map
    assert image_bytes({"data": PNG, "model_name": b"digits"}, {}, LIMIT) == PNG
    with pytest.raises(RequestError, match="none named 'data'"):
        image_bytes({"a": PNG, "b": PNG}, {}, LIMIT)


def test_headers_are_read_case_insensitively_and_part_entries_ignored():
    assert media_type({"content-type": "Image/PNG; q=1"}) == "image/png"
    assert media_type({"file": {"content-type": "image/png"}}) == ""
    assert wants_explanation({"explain": "True"}) and not wants_explanation({"explain": "False"})
    assert not wants_explanation({})


def test_signatures_cover_every_accepted_format():
    import io

    from PIL import Image

    im = Image.new("RGB", (4, 4))
    for fmt in ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"):
        buf = io.BytesIO()
        im.save(buf, fmt)
        assert looks_like_image(buf.getvalue()), fmt
    assert not looks_like_image(b"hello") and not looks_like_image(b"")


def _answer(row: dict, headers: dict) -> str:
    """The JSON body the handler answers a refused request with, as it goes on the wire;
    the refusal's own message, so that it is bounded before the handler's last guard."""
    with pytest.raises(RequestError) as e:
        image_bytes(row, headers, LIMIT)
    assert error_message(e.value) == str(e.value)
    return json.dumps({"error": str(e.value), "code": e.value.status})


def test_an_error_quotes_at_most_a_few_hundred_bytes_of_a_huge_request():
    # 200,000 JSON keys once got a 1.7 MB 400 that listed every one
    keys = {f"key{i}": 1 for i in range(200_000)}
    answer = _answer({"body": keys}, _headers("application/json"))
    assert len(answer.encode()) < 512, len(answer)
    assert "keys sent: key0, key1" in answer and "and 1999" in answer
    # 1,000 multipart parts once got 6 KB of part names
    names = [f"part-{i}" for i in range(1000)]
    ctype = "multipart/form-data; boundary=----x"
    headers = _headers(ctype, **{n: {"content-type": ""} for n in names})
    answer = _answer({n: b"x" for n in names}, headers)
    assert len(answer.encode()) < 512, len(answer)
    assert "1000 parts (part-0, part-1" in answer and "no file part" in answer
    # one name of 100,000 characters, and fields beside a gRPC input
    long = "n" * 100_000
    for row in ({long: b"{"}, {long: b"x", "b": b"y"}):
        answer = _answer(row, _headers())
        assert len(answer.encode()) < 512 and "more characters" in answer, answer


def test_client_text_in_an_error_is_escaped():
    key = "a\r\nX-Injected: 1\x00\x1b[31m\u00e9\u732b"
    message = _answer({"body": {key: 1}}, _headers("application/json"))
    text = json.loads(message)["error"]
    assert text.isascii() and text.isprintable(), text
    assert "a\\r\\nX-Injected: 1\\x00\\x1b[31m\\xe9\\u732b" in text
    ctype = "multipart/form-data; boundary=----x"
    parts = {"\u00e9t\u00e9\r\n": b"a", "b": b"b"}
    text = json.loads(_answer(parts, _headers(ctype)))["error"]
    assert text.isascii() and text.isprintable() and "\\xe9t\\xe9\\r\\n, b" in text
    # quoting is bounded, counts what it left out, and quoting again changes nothing
    assert quoted("x" * 1000, 10) == "xxxxxxxxxx... (990 more characters)"
    assert quoted(quoted(key)) == quoted(key)
    assert quoted_names([], 0) == "none"


def test_the_status_line_is_the_codes_own_phrase_never_the_message():
    # the reason phrase once carried the message, and with it the client's field names
    assert status_phrase(400) == "Bad Request"
    assert status_phrase(415) == "Unsupported Media Type"
    assert status_phrase(413) == HTTPStatus(413).phrase
    assert status_phrase(499) == "Error"
    for code in (400, 413, 415, 499):
        assert status_phrase(code).isascii() and status_phrase(code).isprintable()
