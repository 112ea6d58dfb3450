"""Regenerate the gRPC stubs: ``python -m visionline.serving.proto.generate``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def generate(out_dir: Path = HERE) -> list[Path]:
    import google.rpc
    from grpc_tools import protoc

    grpc_tools_include = Path(protoc.__file__).resolve().parent / "_proto"
    googleapis = Path(google.rpc.__path__[0]).resolve().parents[1]
    rc = protoc.main(
        [
            "protoc",
            f"-I{HERE}",
            f"-I{grpc_tools_include}",
            f"-I{googleapis}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(HERE / "inference.proto"),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}")
    grpc_file = out_dir / "inference_pb2_grpc.py"
    # protoc writes a top-level import; make it relative to this package.
    text = grpc_file.read_text()
    grpc_file.write_text(
        re.sub(r"^import inference_pb2 as", "from . import inference_pb2 as", text, flags=re.M)
    )
    return [out_dir / "inference_pb2.py", grpc_file]


if __name__ == "__main__":
    for p in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(p)
