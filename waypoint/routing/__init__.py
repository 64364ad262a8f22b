"""L7 routing for the waypoint, sans-IO: compile the controller's `WaypointRoutes` into a
`RouteTable` once (`build_table`), then decide each request with the pure `route()`.

Modules, one concept each: `matchers` (string/header/query/request matching), `paths` (rewrite
and redirect path arithmetic), `redirect` (the Location), `headers` (header operations and how the
route and destination levels combine), `weights` (weighted choice), `table` (compilation and host
lookup), `route` (the decision).
"""

from waypoint.routing.route import route
from waypoint.routing.table import RouteTable, build_table

__all__ = ["RouteTable", "build_table", "route"]
