"""Writers racing on the registry: conditional writes on both store backends, then
packagers and promotions running at once (threads and processes) never collide."""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

from tests.support.registry_worker import allocate_many
from tests.support.s3 import FaultProxy
from visionline.registry import Registry
from visionline.storage import LocalStore, S3Store, make_s3_client


@pytest.fixture(params=["local", "s3"])
def cas_store(request, tmp_path):
    """Both backends; S3 is moto behind a proxy that serialises requests (see FaultProxy:
    moto's precondition check and write are two steps, S3's are one)."""
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
        return
    moto = request.getfixturevalue("moto_server")
    bucket = request.getfixturevalue("bucket")
    with FaultProxy(moto, fail_first=0, serialize=True) as proxy:
        yield S3Store(
            f"s3://{bucket}/artifacts", client=make_s3_client(max_pool=64, endpoint_url=proxy.url)
        )


def _race(n: int, fn):
    barrier = threading.Barrier(n)

    def go(i):
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(go, range(n)))


def test_put_if_absent_has_exactly_one_winner(cas_store):
    for trial in range(5):
        wins = _race(12, lambda i, t=trial: cas_store.put_if_absent(f"claims/{t}", str(i).encode()))
        assert wins.count(True) == 1
        winner = wins.index(True)
        assert cas_store.get_bytes(f"claims/{trial}", verify=True) == str(winner).encode()


def test_put_if_match_refuses_a_stale_version(cas_store):
    assert cas_store.put_if_match("state.json", b"1", None)
    assert not cas_store.put_if_match("state.json", b"x", None)  # no longer absent
    data, token = cas_store.get_versioned("state.json")
    assert data == b"1"
    assert cas_store.put_if_match("state.json", b"2", token)
    assert not cas_store.put_if_match("state.json", b"3", token)  # stale: someone wrote
    assert cas_store.get_bytes("state.json") == b"2"


def test_update_json_loses_no_concurrent_update(cas_store):
    def bump(i):
        for _ in range(5):
            cas_store.update_json("counter.json", lambda c: {"n": (c or {"n": 0})["n"] + 1})

    _race(6, bump)
    assert cas_store.get_json("counter.json") == {"n": 30}


def test_concurrent_packagers_get_distinct_versions(cas_store):
    reg = Registry(cas_store, "digits")
    got = _race(8, lambda i: [reg.allocate_version(f"run-{i}") for _ in range(3)])
    versions = [v for vs in got for v in vs]
    assert len(versions) == len(set(versions)) == 24
    assert sorted(map(int, versions)) == list(range(1, 25))
    # each claim names the packager that holds it
    for i, vs in enumerate(got):
        for v in vs:
            assert cas_store.get_json(f"models/digits/{v}/claim.json")["run_id"] == f"run-{i}"


def test_packager_processes_get_distinct_versions(cas_store):
    ctx = multiprocessing.get_context("spawn")  # no forked boto3 clients or locks
    uri = cas_store.uri
    client = getattr(cas_store, "client", None)
    endpoint = client.meta.endpoint_url if client is not None else None
    with ProcessPoolExecutor(3, mp_context=ctx) as pool:
        futures = [pool.submit(allocate_many, uri, endpoint, f"proc-{i}", 4) for i in range(3)]
        versions = [v for f in futures for v in f.result(timeout=300)]
    assert len(versions) == len(set(versions)) == 12


def test_concurrent_promotions_all_land_in_the_history(cas_store):
    reg = Registry(cas_store, "digits")
    for v in range(1, 9):
        reg.register(str(v), {"run_id": f"r{v}"})
    _race(8, lambda i: reg.promote(str(i + 1), "race"))
    a = reg.aliases()
    assert sorted(a["history"], key=int) == [str(v) for v in range(1, 9)]
    assert a["champion"] == a["history"][-1] and a["previous"] == a["history"][-2]
    assert len([e for e in reg.log() if e["action"] == "promote"]) == 8
