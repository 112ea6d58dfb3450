"""Our TorchServe handler, in-process, with TorchServe's own Context and metrics cache."""

import base64
import importlib.util
import json
import zipfile
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.support.faults import bomb_png
from tests.support.images import encodings
from visionline.registry import Registry


def _load_handler_class():
    spec = importlib.util.spec_from_file_location(
        "image_classifier", REPO / "handlers" / "image_classifier.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ImageClassifier


@pytest.fixture(scope="module")
def handler_env(packaged_digits, tmp_path_factory):
    import sys

    from ts.context import Context
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    store, ref, _ = packaged_digits
    model_dir = tmp_path_factory.mktemp("mar")
    mar = store.get_file(ref.mar_key, model_dir / "model.mar", verify=True)
    with zipfile.ZipFile(mar) as z:
        z.extractall(model_dir)
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    import ts

    metrics = MetricsCacheYamlImpl(
        config_file_path=str(Path(ts.__file__).parent / "configs" / "metrics.yaml")
    )
    metrics.initialize_cache()
    ctx = Context(
        ref.name,
        str(model_dir),
        manifest,
        batch_size=8,
        gpu=None,
        mms_version="0.12.0",
        metrics=metrics,
        model_yaml_config={},
    )  # as the real worker passes them
    sys.path.insert(0, str(model_dir))  # TorchServe puts the model dir on the path too
    handler = _load_handler_class()()
    handler.initialize(ctx)
    good = store.get_bytes(Registry(store, ref.name).info(ref.version)["parity_keys"][0])
    yield handler, ctx, good
    sys.path.remove(str(model_dir))


def _run(handler, ctx, bodies):
    from ts.context import RequestProcessor

    rows, headers = [], []
    for body in bodies:
        if isinstance(body, tuple):  # (body, content-type)
            body, ctype = body
            headers.append(RequestProcessor({"Content-Type": ctype}))
        else:
            headers.append(RequestProcessor({}))
        rows.append({"body": body})
    ctx.request_processor = headers
    out = handler.handle(rows, ctx)
    return out, [h._status_code for h in headers]


def test_every_image_encoding_is_accepted(handler_env):
    handler, ctx, good = handler_env
    forms = encodings(good)
    out, status = _run(handler, ctx, list(forms.values()))
    assert status == [200] * len(forms)
    for name, result in zip(forms, out, strict=True):
        assert len(result) == 3, name  # top-k, k from the config
        assert 0.0 < sum(result.values()) <= 1.0 + 1e-6, name
    # the same picture in every encoding gets the same answer
    assert len({max(r, key=r.get) for r in out}) == 1


def test_json_base64_body(handler_env):
    handler, ctx, good = handler_env
    raw, _ = _run(handler, ctx, [good])
    js, status = _run(handler, ctx, [{"data": base64.b64encode(good).decode()}])
    assert status == [200] and js == raw


BAD = {
    "not an image": (b"hello, world" * 10, "not a recognised image format"),
    "truncated": (None, "truncated"),
    "zero bytes": (b"", "empty"),
    "too many pixels": (bomb_png(30000, 30000), "decompression-bomb guard"),
    "malformed json": ((b'{"data": ', "application/json"), "malformed JSON"),
    "json without data": ({"image": 1}, "JSON body must be"),
    "bad base64": ({"data": "***"}, "not valid base64"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_fails_alone_and_the_batch_is_served(handler_env, case):
    handler, ctx, good = handler_env
    body, message = BAD[case]
    if body is None:
        png = encodings(good)["png"]
        body = png[: len(png) // 2]
    out, status = _run(handler, ctx, [good, body, good])
    assert status == [200, 400, 200]
    assert message in out[1]["error"]
    assert out[0] == out[2] and "error" not in out[0]
    # and the handler keeps serving (a batch of one may differ from a batch of three
    # in the last float bits: batched kernels sum in another order)
    after, status = _run(handler, ctx, [good])
    assert status == [200] and after[0].keys() == out[0].keys()
    assert all(abs(after[0][k] - out[0][k]) < 1e-5 for k in out[0])


def test_a_batch_of_only_bad_requests(handler_env):
    handler, ctx, _ = handler_env
    out, status = _run(handler, ctx, [b"", b"junk"])
    assert status == [400, 400] and all("error" in o for o in out)


def test_served_probabilities_equal_the_model(handler_env, packaged_digits):
    from visionline.data.images import decode_image
    from visionline.data.transforms import Preprocessing, eval_transform
    from visionline.model.runs import load_trained_model

    handler, ctx, good = handler_env
    store, ref, _ = packaged_digits
    model, info = load_trained_model(store, Registry(store, ref.name).info(ref.version)["run_id"])
    x = eval_transform(Preprocessing.from_dict(info["preprocessing"]))(
        decode_image(good)
    ).unsqueeze(0)
    with torch.inference_mode():
        p = torch.softmax(model(x), 1)[0]
    out, _ = _run(handler, ctx, [good])
    for label, prob in out[0].items():  # within the planner's check, whichever rewrite won
        assert abs(float(p[info["classes"].index(label)]) - prob) < 1e-5


def test_the_worker_serves_the_planned_forward_pass(handler_env):
    handler, _, _ = handler_env
    plan = handler.inference_plan
    assert plan is not None and plan.mode == "auto"  # the packaged default
    assert handler.model is plan.model
    assert set(plan.ms_per_call) >= {"eager"} and 8 in plan.ms_per_call["eager"]  # batch_size 8
    assert plan.choice == "eager" or plan.speedup() >= 1.05


def _run_rows(handler, ctx, requests):
    """``requests``: (row, headers) pairs, as TorchServe's frontend builds them."""
    from ts.context import RequestProcessor

    processors = [RequestProcessor(dict(headers)) for _, headers in requests]
    ctx.request_processor = processors
    out = handler.handle([row for row, _ in requests], ctx)
    return out, [p._status_code for p in processors]


def test_explanations_are_answered_per_request_in_a_mixed_batch(handler_env):
    """TorchServe decides 'explain' from a batch's first request; each request must still
    get what it asked for, whichever comes first."""
    handler, ctx, good = handler_env
    explain, predict = {"explain": "True"}, {"explain": "False"}
    (plain,), _ = _run_rows(handler, ctx, [({"body": good}, predict)])
    for order in ((explain, predict, explain), (predict, explain, predict)):
        batch = [({"body": good}, h) for h in order] + [({"body": b"junk"}, explain)]
        out, status = _run_rows(handler, ctx, batch)
        assert status == [200, 200, 200, 400]
        for answer, h in zip(out, order, strict=False):
            if h is explain:
                assert answer["label"] == max(plain, key=plain.get)
                assert answer["predictions"].keys() == plain.keys()
                sal = answer["saliency"]
                side = handler._pre.image_size  # the model input; small enough to stay whole
                assert (sal["height"], sal["width"]) == (side, side)
                assert max(max(r) for r in sal["values"]) == 1.0
            else:
                assert answer.keys() == plain.keys()
                assert all(abs(answer[k] - plain[k]) < 1e-5 for k in plain)
        assert "not a recognised image format" in out[3]["error"]


def test_request_shapes_and_their_status_codes(handler_env):
    from tests.support.hostile import strip_png

    handler, ctx, good = handler_env
    form = {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "125"}
    multipart = {"Content-Type": "multipart/form-data; boundary=x", "file": {"content-type": ""}}
    limit = handler._serving["max_request_bytes"]  # from the archive's serving.json
    out, status = _run_rows(
        handler,
        ctx,
        [
            ({"file": good}, multipart),  # curl -F file=@digit.png
            ({}, form),  # curl --data-binary @digit.png: TorchServe lost the bytes
            ({"body": strip_png(1, 4_000_000)}, {}),
            ({"body": good + b"\0" * limit}, {}),
            ({"body": good}, {"Content-Type": "image/png"}),
        ],
    )
    assert status == [200, 415, 400, 413, 200]
    assert "application/x-www-form-urlencoded" in out[1]["error"]
    assert "aspect ratio" in out[2]["error"] and "over the limit" in out[3]["error"]
    assert out[0] == out[4]
