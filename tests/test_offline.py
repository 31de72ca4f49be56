"""The suite runs with no network but loopback (scripts/offline), so nothing can reach a hub."""

import os
import socket

import pytest


@pytest.mark.skipif(not os.environ.get("QEVAL_OFFLINE"), reason="run through `make test` (scripts/offline)")
def test_only_loopback_is_reachable():
    interfaces = sorted(name for _, name in socket.if_nameindex())
    assert interfaces == ["lo"]
    with pytest.raises(OSError):
        socket.create_connection(("1.1.1.1", 443), timeout=2)
    with socket.socket() as server:  # loopback itself works (Ray and the S3 test server need it)
        server.bind(("127.0.0.1", 0))
        server.listen()
        socket.create_connection(server.getsockname(), timeout=2).close()
