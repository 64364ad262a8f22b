"""Run a waypoint: `python -m waypoint --waypoint NS/NAME --pod-name POD --node NODE ...`.

Every setting is in waypoint/settings.py (`--help` lists them with their environment variables).
With more than one worker (`--workers`) this process is the workers' supervisor
(waypoint/workers.py), which imports the proxy only in its workers; else it is the waypoint itself
(waypoint/serve.py)."""

from __future__ import annotations

import sys

from ambit.dataplane import process
from waypoint.settings import WaypointSettings, load


def main(argv: list[str] | None = None) -> None:
    raw = list(sys.argv[1:] if argv is None else argv)

    async def start(args: WaypointSettings) -> None:
        if args.worker_index < 0 and args.worker_count > 1:
            from waypoint import workers
            await workers.supervise(args, raw)
            return
        from waypoint import serve
        await serve.amain(args)
    process.run("waypoint", load, start, raw)


if __name__ == "__main__":
    main()
