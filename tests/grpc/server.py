"""A real gRPC server for graygate's tests: Python grpcio with generic handlers, no generated code.

    server.py NAME

Binds 127.0.0.1 on a port the kernel chooses, prints "PORT <n>" on a line of its own, and
serves until its standard input closes (the test holding the pipe stops or dies) or it is
killed. Messages are raw bytes. Service graygate.test.Echo:

  Unary     answers b"NAME:" + request
  Stream    request b"N" (a count, at most 1000): answers N messages b"NAME:0" .. b"NAME:N-1"
  Fail      aborts with PERMISSION_DENIED and the message "denied: " + request
  Metadata  answers JSON {"backend": NAME, "metadata": {key: value}} of what it received;
            trailing metadata x-backend: NAME

Every answer carries trailing metadata x-backend: NAME.
"""

import json
import sys
import threading
from concurrent import futures

import grpc

SERVICE = "graygate.test.Echo"


def main():
    if len(sys.argv) != 2:
        print("usage: server.py NAME", file=sys.stderr)
        return 2
    name = sys.argv[1]
    prefix = name.encode() + b":"
    trailer = (("x-backend", name),)

    def unary(request, context):
        context.set_trailing_metadata(trailer)
        return prefix + request

    def stream(request, context):
        context.set_trailing_metadata(trailer)
        try:
            count = int(request.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not a count")
        for i in range(max(0, min(count, 1000))):
            yield prefix + str(i).encode()

    def fail(request, context):
        context.set_trailing_metadata(trailer)
        context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            "denied: " + request.decode("utf-8", "replace"),
        )

    def metadata(request, context):
        context.set_trailing_metadata(trailer)
        seen = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        return json.dumps({"backend": name, "metadata": seen}).encode()

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Metadata": grpc.unary_unary_rpc_method_handler(metadata),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    if port == 0:
        print("cannot bind 127.0.0.1", file=sys.stderr)
        return 1
    server.start()
    print(f"PORT {port}", flush=True)

    def watch_stdin():
        sys.stdin.read()
        server.stop(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
