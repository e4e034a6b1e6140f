"""A job's rendezvous port: below the kernel's range for client sockets, and never handed out
twice while another job may hold it."""

from __future__ import annotations

import socket

from harness.launchers.protocol import free_port, rendezvous_ports


def test_rendezvous_ports_lie_below_the_range_client_sockets_take() -> None:
    assert rendezvous_ports((32768, 60999)) == range(10000, 32768)
    # a kernel whose range starts too low leaves no room below it: any unprivileged port
    assert rendezvous_ports((10500, 65535)) == range(1024, 65536)
    assert rendezvous_ports(None) == range(1024, 65536)


def test_free_ports_are_free_and_not_handed_out_twice() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    for port in ports[:5]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.bind(("127.0.0.1", port))  # free: it binds
