"""Run a node's ztunnel: `python -m ztunnel --node NAME --zds-socket PATH [--controller TARGET]`.

Every setting is in ztunnel/settings.py (`--help` lists them with their environment variables).
With more than one worker (`--workers`, default one per CPU) this process is the workers'
supervisor (ztunnel/workers.py), which imports the proxy only when it serves traffic itself; the
settings load no grpc, TLS or codec either, so a supervisor is ~30 MB RSS against a worker's ~56
(docs/performance.md, §34)."""

from __future__ import annotations

import logging
import os
import sys

from ambit.dataplane import process
from ztunnel.settings import ZtunnelSettings, load


def main(argv: list[str] | None = None) -> None:
    raw = list(sys.argv[1:] if argv is None else argv)

    async def start(args: ZtunnelSettings) -> None:
        if args.worker_index < 0 and args.worker_count > 1:
            from ztunnel.pods import reuseport_supported
            if reuseport_supported():
                from ztunnel import workers
                await workers.supervise(args, raw)
                return
            # Workers share listeners through SO_REUSEPORT groups, which ztunnel uses only where
            # ambit_tc_in can hand inbound connections to them (Linux 6.5): else one process.
            logging.getLogger("ambit.ztunnel").warning(
                "--workers %d: kernel %s is older than 6.5 (no bpf_sk_assign to SO_REUSEPORT listeners); "
                "running one process", args.worker_count, os.uname().release)
        from ztunnel import serve
        await serve.amain(args)
    process.run("ztunnel", load, start, raw)


if __name__ == "__main__":
    main()
