"""The controller's config server: delta streaming of the mesh model to agents, ztunnels, waypoints.

See docs/config-stream.md.
"""

from controller.configserver.scope import TYPE_ORDER, scope, scope_key
from controller.configserver.server import ConfigServer, status_response
from controller.configserver.subscription import Nack, SubscriberStatus, Subscription, TypeStatus

__all__ = [
    "TYPE_ORDER",
    "ConfigServer",
    "Nack",
    "SubscriberStatus",
    "Subscription",
    "TypeStatus",
    "scope",
    "scope_key",
    "status_response",
]
