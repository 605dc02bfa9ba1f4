"""A real gRPC client for graygate's tests (Python grpcio, raw-bytes messages, no generated code).

    client.py TARGET METHOD REQUEST [KEY=VALUE ...]

Calls /graygate.test.Echo/METHOD on TARGET (host:port, plaintext HTTP/2 with prior
knowledge) with REQUEST as the message and each KEY=VALUE as metadata, and prints one JSON
object: {"code": "OK", "details": ..., "messages": [...], "trailing": {...}}. Stream is
server streaming; every other method is unary. An RPC that fails is still a printed
answer (exit 0); bad arguments exit 2.
"""

import json
import sys

import grpc

SERVICE = "graygate.test.Echo"


def main():
    if len(sys.argv) < 4:
        print("usage: client.py TARGET METHOD REQUEST [KEY=VALUE ...]", file=sys.stderr)
        return 2
    target, method, request = sys.argv[1], sys.argv[2], sys.argv[3].encode()
    metadata = []
    for pair in sys.argv[4:]:
        key, sep, value = pair.partition("=")
        if not sep:
            print(f"metadata {pair!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        metadata.append((key, value))
    path = f"/{SERVICE}/{method}"
    messages = []
    with grpc.insecure_channel(target) as channel:
        if method == "Stream":
            call = channel.unary_stream(path)(request, metadata=metadata, timeout=10)
            try:
                for message in call:
                    messages.append(message)
            except grpc.RpcError:
                pass
        else:
            try:
                message, call = channel.unary_unary(path).with_call(
                    request, metadata=metadata, timeout=10
                )
                messages.append(message)
            except grpc.RpcError as error:
                call = error
        answer = {
            "code": call.code().name,
            "details": call.details(),
            "messages": [m.decode("utf-8", "replace") for m in messages],
            "trailing": {
                k: v for k, v in (call.trailing_metadata() or ()) if isinstance(v, str)
            },
        }
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
