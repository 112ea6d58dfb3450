"""Clients for TorchServe's inference APIs: REST and gRPC, one small interface."""

from __future__ import annotations

import base64
import json
from typing import Any, Protocol

import grpc
import requests
from google.protobuf import empty_pb2

from visionline.errors import ServingError
from visionline.serving.proto import inference_pb2, inference_pb2_grpc


class PredictionError(ServingError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class InferenceClient(Protocol):
    def predict(self, image: bytes) -> dict[str, float]: ...


class RestClient:
    """``POST /predictions/<model>`` with the inference token."""

    def __init__(
        self,
        endpoint: str,
        model: str,
        token: str | None,
        timeout: float = 60,
        session: requests.Session | None = None,
    ) -> None:
        self.url = f"{endpoint.rstrip('/')}/predictions/{model}"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout
        self.session = session or requests.Session()

    def _check(self, r: requests.Response) -> dict[str, Any]:
        if r.status_code != 200:
            raise PredictionError(
                f"{self.url} answered {r.status_code}: {r.text[:500]}", r.status_code
            )
        return r.json()

    def predict(self, image: bytes) -> dict[str, float]:
        r = self.session.post(self.url, data=image, headers=self.headers, timeout=self.timeout)
        return self._check(r)

    def predict_json(self, image: bytes) -> dict[str, float]:
        body = json.dumps({"data": base64.b64encode(image).decode()})
        r = self.session.post(
            self.url,
            data=body,
            timeout=self.timeout,
            headers={**self.headers, "Content-Type": "application/json"},
        )
        return self._check(r)


class GrpcClient:
    """TorchServe's ``InferenceAPIsService`` through our stubs (serving/proto)."""

    def __init__(self, target: str, model: str, token: str | None, timeout: float = 60) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = inference_pb2_grpc.InferenceAPIsServiceStub(self.channel)
        self.model = model
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def ping(self) -> str:
        return self.stub.Ping(
            empty_pb2.Empty(), timeout=self.timeout, metadata=self.metadata
        ).health

    def predict(self, image: bytes) -> dict[str, float]:
        req = inference_pb2.PredictionsRequest(model_name=self.model, input={"data": image})
        try:
            resp = self.stub.Predictions(req, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as e:
            raise PredictionError(f"gRPC {e.code().name}: {e.details()}") from e
        result = json.loads(resp.prediction)
        # gRPC carries no per-request status from a batch: the handler's error body is it.
        if isinstance(result, dict) and set(result) == {"error", "code"}:
            raise PredictionError(f"{self.model}: {result['error']}", int(result["code"]))
        return result

    def close(self) -> None:
        self.channel.close()
