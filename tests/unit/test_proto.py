from pathlib import Path

from visionline.serving.proto import generate


def test_committed_stubs_match_the_proto(tmp_path):
    fresh = generate.generate(tmp_path)
    for f in fresh:
        committed = Path(generate.__file__).parent / f.name
        assert committed.read_text() == f.read_text(), (
            f"{f.name} is stale: python -m visionline.serving.proto.generate"
        )


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
