"""One suite, both backends: the local directory and S3 (moto server over HTTP)."""

import os
import threading

import pytest

from tests.support.s3 import FaultProxy
from visionline.errors import (
    BucketNotFoundError,
    CredentialsError,
    IntegrityError,
    KeyNotFoundError,
)
from visionline.storage import (
    LocalStore,
    PutItem,
    S3Store,
    make_s3_client,
    open_store,
    sha256_bytes,
)


def test_bytes_json_roundtrip_and_sha(store):
    digest = store.put_bytes("a/b/c.bin", b"hello")
    assert digest == sha256_bytes(b"hello")
    assert store.get_bytes("a/b/c.bin", verify=True) == b"hello"
    assert store.sha256("a/b/c.bin") == digest
    store.put_json("a/meta.json", {"x": 1})
    assert store.get_json("a/meta.json") == {"x": 1}
    assert store.exists("a/b/c.bin") and not store.exists("a/b/nope")


def test_list_is_sorted_by_prefix_and_hides_internals(store):
    for k in ["d/2", "d/1", "d/sub/3", "e/4", "dd/5"]:
        store.put_bytes(k, k.encode())
    assert list(store.list("d/")) == ["d/1", "d/2", "d/sub/3"]
    assert list(store.list("d")) == ["d/1", "d/2", "d/sub/3", "dd/5"]
    assert all(not k.startswith(".") for k in store.list(""))


def test_files_and_multipart(store, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(20 * 1024 * 1024))  # over the multipart threshold
    digest = store.put_file("models/big.bin", big)
    out = store.get_file("models/big.bin", tmp_path / "dl" / "big.bin", verify=True)
    assert out.read_bytes() == big.read_bytes()
    assert store.sha256("models/big.bin") == digest


def test_put_many_parallel(store):
    items = [PutItem(key=f"many/{i:03d}", data=str(i).encode()) for i in range(60)]
    seen = []
    result = store.put_many(items, workers=8, progress=seen.append)
    assert len(result) == 60 and sum(seen) == 60
    assert store.get_bytes("many/042") == b"42"


def test_missing_key_is_typed(store):
    with pytest.raises(KeyNotFoundError, match="no object 'x/y'"):
        store.get_bytes("x/y")
    with pytest.raises(KeyNotFoundError):
        store.sha256("x/y")


def test_bad_keys_refused(store):
    for key in ["../escape", "/abs", "", "dir/"]:
        with pytest.raises(Exception, match="invalid store key"):
            store.put_bytes(key, b"x")


def test_concurrent_reader_never_sees_partial_object(store):
    a, b = b"A" * 300_000, b"B" * 300_000
    store.put_bytes("obj", a)
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            store.put_bytes("obj", b)
            store.put_bytes("obj", a)

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(40):
            assert store.get_bytes("obj") in (a, b)
    finally:
        stop.set()
        t.join()


def test_local_corruption_detected(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes("k", b"original")
    (tmp_path / "k").write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="corrupt"):
        store.get_bytes("k", verify=True)


def test_s3_corruption_detected(s3_client, bucket):
    store = S3Store(f"s3://{bucket}", client=s3_client)
    s3_client.put_object(
        Bucket=bucket, Key="k", Body=b"tampered", Metadata={"sha256": sha256_bytes(b"x")}
    )
    with pytest.raises(IntegrityError):
        store.get_bytes("k", verify=True)


def test_missing_bucket_says_what_to_do(s3_client):
    store = S3Store("s3://no-such-bucket-here/p", client=s3_client)
    with pytest.raises(BucketNotFoundError, match="create it"):
        store.put_bytes("k", b"x")
    with pytest.raises(BucketNotFoundError):
        store.exists("k")


def test_missing_credentials_say_what_to_do(moto_server, monkeypatch, tmp_path):
    for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = S3Store("s3://whatever/p", client=make_s3_client())
    with pytest.raises(CredentialsError, match="AWS_ACCESS_KEY_ID"):
        store.put_bytes("k", b"x")


def test_throttling_and_5xx_are_retried(moto_server, bucket, monkeypatch):
    with FaultProxy(moto_server, fail_first=3) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        store = open_store(f"s3://{bucket}/p", s3_client=make_s3_client())
        store.put_bytes("k", b"survived")
        assert store.get_bytes("k") == b"survived"
    assert proxy.failed == 3 and proxy.requests >= 5


def test_open_store_rejects_unknown_scheme():
    with pytest.raises(Exception, match="unsupported store URI"):
        open_store("gs://bucket/x")


def test_browser_url_is_presigned_on_s3_and_absent_locally(store):
    import requests

    store.put_bytes("reports/x.png", b"\x89PNG picture")
    url = store.browser_url("reports/x.png")
    if store.uri.startswith("s3://"):
        assert url and "Signature" in url and "Expires" in url
        assert requests.get(url, timeout=10).content == b"\x89PNG picture"
    else:
        assert url is None  # a browser page will not follow file:// links: shown as text
