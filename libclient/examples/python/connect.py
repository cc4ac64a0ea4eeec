"""Connecting to rvirt over a Unix socket, shared by the examples.

The socket is $RVIRT_SOCKET, else virtproxyd's read-write socket: $RVIRT_ROOT/run/rvirt/rvirt-sock
when RVIRT_ROOT is set (tests, sandboxes), /run/rvirt/rvirt-sock otherwise. The connection URI
travels with every call as the `rvirt-uri` metadata: $RVIRT_URI, default test:///default.
"""

import os

import grpc


def socket_path():
    if os.environ.get("RVIRT_SOCKET"):
        return os.environ["RVIRT_SOCKET"]
    root = os.environ.get("RVIRT_ROOT", "/")
    return os.path.join(root, "run/rvirt/rvirt-sock")


def channel():
    return grpc.insecure_channel(
        "unix:" + socket_path(),
        # grpcio would send the socket path as the HTTP/2 :authority, which is not a valid
        # authority: the server resets the stream (INTERNAL: Received RST_STREAM with error
        # code 1). Every gRPC library needs "localhost" here on a Unix socket.
        options=[("grpc.default_authority", "localhost")],
    )


def metadata():
    return [("rvirt-uri", os.environ.get("RVIRT_URI", "test:///default"))]
