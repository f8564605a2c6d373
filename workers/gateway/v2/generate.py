"""Regenerates the gRPC modules beside `grpc_predict_v2.proto` (needs the dev extra's
grpcio-tools): `python -m workers.gateway.v2.generate`. The output is committed, so an
install needs no code generator."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PROTO = Path(__file__).with_name("grpc_predict_v2.proto").relative_to(ROOT)


def main() -> int:
    from grpc_tools import protoc

    return int(
        protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{ROOT}",
                f"--python_out={ROOT}",
                f"--pyi_out={ROOT}",
                f"--grpc_python_out={ROOT}",
                str(PROTO),
            ]
        )
    )


if __name__ == "__main__":
    sys.exit(main())
