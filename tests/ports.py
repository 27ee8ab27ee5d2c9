"""A free TCP port for a test's coordinator, so parallel test workers never share one."""

import socket


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]
