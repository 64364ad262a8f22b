"""`ambit bench`: run the benchmark suite (the same as `python -m bench`; see bench/README.md)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from bench import cli

    p = sub.add_parser("bench", help="benchmark the mesh against direct traffic, stunnel and haproxy")
    cli.add_arguments(p)
    p.set_defaults(func=cli.run)
