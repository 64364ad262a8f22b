"""The lab's sample apps, by the name a lab spec gives them (`app: httpbin` instead of a command).

Each is `(command, container ports)`; "python" is Ambit's interpreter (spec.py resolves it).
"""

from __future__ import annotations

from typing import Any

APPS: dict[str, tuple[list[str], list[dict[str, Any]]]] = {
    "echo": (["python", "-m", "ambitctl.lab.apps.echo", "--port", "8080"],
             [{"name": "http", "containerPort": 8080}]),
    "httpbin": (["python", "-m", "ambitctl.lab.apps.httpbin", "--port", "8000"],
                [{"name": "http", "containerPort": 8000}]),
    "grpc-echo": (["python", "-m", "ambitctl.lab.apps.grpc_echo", "--port", "9090"],
                  [{"name": "grpc", "containerPort": 9090}]),
    "ext-authz": (["python", "-m", "ambitctl.lab.apps.ext_authz", "--http-port", "8000", "--grpc-port", "9000"],
                  [{"name": "http", "containerPort": 8000}, {"name": "grpc", "containerPort": 9000}]),
    "tcp-echo": (["python", "-m", "ambitctl.lab.apps.tcp_echo", "--port", "9000", "--prefix", "hello"],
                 [{"name": "tcp", "containerPort": 9000}]),
}
