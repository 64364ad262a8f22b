"""`ambit check`: kernel and machine preflight."""

from __future__ import annotations

import argparse
import json

from ambit import check
from ambitctl.term import paint


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="preflight: kernel, BPF, cgroup v2, bcc, capabilities, netns")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    results = check.run_all()
    doc = check.as_json(results)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for r in results:
            mark = paint("ok", "green") + "  " if r.ok else (paint("FAIL", "red") if r.required else paint("warn", "yellow"))
            print(f"[{mark}] {r.name:<22} {r.detail}")
            if not r.ok and r.hint:
                print(f"       hint: {r.hint}")
    return 0 if doc["ok"] else 1
