"""The SSH connector's TCP socket: small packets leave at once and what the
host sends is acknowledged at once (real sshd on 127.0.0.11 and a local
listener).

Without both, a request-and-reply protocol over SSH waits on Nagle's
algorithm and delayed acknowledgements: a new connection's first ``exec``
took 47 ms on loopback instead of 3 ms, the handshake 63 ms instead of 20.
"""

from __future__ import annotations

import dataclasses
import socket
import threading

import pytest

from adapters.connectors.ssh import SSHConnector, open_socket
from adapters.errors import HostUnreachable
from tests.sshd import SSHTestHost, free_port

pytestmark = pytest.mark.usefixtures("ssh_hosts")


def _transport_socket(connector: SSHConnector) -> socket.socket:
    client = connector._connection()  # the socket under paramiko is the point
    transport = client.get_transport()
    assert transport is not None
    sock = transport.sock
    assert isinstance(sock, socket.socket)
    return sock


def test_the_connection_sends_small_packets_without_waiting(ssh_host: SSHTestHost) -> None:
    connector = SSHConnector(ssh_host.settings())
    try:
        connector.run("true", check=True)
        sock = _transport_socket(connector)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        connector.close()


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux's")
def test_each_read_asks_the_kernel_to_acknowledge_at_once() -> None:
    """TCP_QUICKACK does not stay set: each read sets it again."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        accepted: list[socket.socket] = []
        thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]))
        thread.start()
        sock = open_socket("127.0.0.1", port, 5.0)
        thread.join(5)
        peer = accepted[0]
        try:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            for _ in range(3):
                # Off, as the kernel turns it off by itself once traffic
                # looks interactive; the next read turns it on again.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
                peer.sendall(b"x" * 100)
                assert sock.recv(100)
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
        finally:
            sock.close()
            peer.close()


def test_a_closed_port_is_still_named_unreachable(ssh_host: SSHTestHost) -> None:
    port = free_port(ssh_host.address)
    c = SSHConnector(dataclasses.replace(ssh_host.settings(), port=port))
    with pytest.raises(HostUnreachable) as caught:
        c.connect()
    assert "unreachable: Connection refused" in str(caught.value), str(caught.value)
