from __future__ import annotations

import socket

import pytest

from bench import holdconns


def test_reads_a_response_split_across_segments():
    a, b = socket.socketpair()
    with a, b:
        body = b"x" * 1024
        b.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1024\r\n\r\n" + body[:100])
        b.sendall(body[100:])
        assert holdconns.read_response(a) == 200
        b.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        assert holdconns.read_response(a) == 404


def test_early_close_is_an_error():
    a, b = socket.socketpair()
    with a:
        b.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        b.close()
        with pytest.raises(ConnectionError, match="mid-body"):
            holdconns.read_response(a)
