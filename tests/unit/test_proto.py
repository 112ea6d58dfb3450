import ast
import re
from pathlib import Path

from visionline.serving.proto import generate

# Lines that name the generator's version, not the protocol: a grpcio-tools patch release
# rewrites them and nothing else (grpcio 1.85.1 vs 1.85.4 was a red `make test`).
GUARDS = {
    "inference_pb2.py": re.compile(
        r"^# Protobuf Python Version: .*$"
        r"|^_runtime_version\.ValidateProtobufRuntimeVersion\((?:.|\n)*?^\)$",
        re.M,
    ),
    "inference_pb2_grpc.py": re.compile(r"^GRPC_GENERATED_VERSION = .*$", re.M),
}


def what_matters(path: Path) -> str:
    """The stub as Python sees it (comments and layout aside), version guards left out:
    the serialized descriptors, the message classes, the service and its methods."""
    text = GUARDS[path.name].sub("", path.read_text())
    return ast.dump(ast.parse(text))


def stale(fresh: list[Path]) -> list[str]:
    committed = Path(generate.__file__).parent
    return [f.name for f in fresh if what_matters(committed / f.name) != what_matters(f)]


def test_committed_stubs_match_the_proto(tmp_path):
    fresh = generate.generate(tmp_path)
    assert {f.name for f in fresh} == set(GUARDS)
    assert stale(fresh) == [], "stale stubs: python -m visionline.serving.proto.generate"


def test_a_changed_proto_makes_the_stubs_stale(tmp_path, monkeypatch):
    """The check above still fails when the protocol changes: a new field in the request
    and a new method each make the committed stubs stale."""
    proto = (Path(generate.__file__).parent / "inference.proto").read_text()
    changed = tmp_path / "proto"
    changed.mkdir()
    request = "message PredictionsRequest {"
    service = "service InferenceAPIsService {"
    assert request in proto and service in proto
    (changed / "inference.proto").write_text(
        proto.replace(request, request + "\n    string tenant = 99;").replace(
            service,
            service
            + "\n    rpc Hello(google.protobuf.Empty) returns (TorchServeHealthResponse) {}",
        )
    )
    monkeypatch.setattr(generate, "HERE", changed)
    assert sorted(stale(generate.generate(changed))) == sorted(GUARDS)


def test_the_version_guards_are_all_that_is_ignored(tmp_path):
    """A different generator version alone is not stale; any other edit is."""
    fresh = generate.generate(tmp_path)
    grpc_stub, pb2 = tmp_path / "inference_pb2_grpc.py", tmp_path / "inference_pb2.py"
    text = grpc_stub.read_text()
    assert "GRPC_GENERATED_VERSION = '" in text
    grpc_stub.write_text(re.sub(r"VERSION = '[^']*'", "VERSION = '9.9.9'", text))
    pb2_text = pb2.read_text()
    assert pb2_text.count("_runtime_version.Domain.PUBLIC,") == 1
    pb2.write_text(
        re.sub(r"Version: \S+", "Version: 9.9.9", pb2_text).replace(
            "_runtime_version.Domain.PUBLIC,", "_runtime_version.Domain.PUBLIC,\n    9,"
        )
    )
    assert stale(fresh) == []
    pb2.write_text(pb2_text.replace("model_version", "model_revision"))
    assert stale(fresh) == ["inference_pb2.py"]
    pb2.write_text(pb2_text)
    grpc_stub.write_text(text.replace("/Predictions'", "/Prediction'"))
    assert stale(fresh) == ["inference_pb2_grpc.py"]


def test_stub_speaks_torchserves_service():
    from visionline.serving.proto import inference_pb2

    svc = inference_pb2.DESCRIPTOR.services_by_name["InferenceAPIsService"]
    assert svc.full_name == "org.pytorch.serve.grpc.inference.InferenceAPIsService"
    assert {m.name for m in svc.methods} == {
        "Ping",
        "Predictions",
        "StreamPredictions",
        "StreamPredictions2",
    }
    fields = {f.name: f.number for f in inference_pb2.PredictionsRequest.DESCRIPTOR.fields}
    assert fields == {"model_name": 1, "model_version": 2, "input": 3, "sequence_id": 4}
