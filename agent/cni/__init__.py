"""Ambit's chained CNI plugin and the node agent's side of it (race-free pod start).

Pods enrolled from the watch are captured only after they are Running, so an app's first
connections can leave uncaptured. The container runtime calls CNI plugins while it creates the pod
sandbox, before any container starts; `ambit-cni`, chained after the node's network plugin, asks the
node agent to capture the pod there and then, and fails the sandbox if that cannot be done.

    spec.py       the CNI protocol (environment, stdin config, results, error codes): pure
    podlookup.py  the pod and namespace the plugin decides on (API server, or the lab store)
    plugin.py     the executable (`ambit-cni`): ADD / DEL / CHECK / VERSION
    server.py     the agent's unix socket the plugin talks to
    install.py    chaining the plugin into the node's CNI configuration, and out again

The plugin and what it imports use the standard library only: the agent copies it onto the host as
one self-contained file (install.py), which runs with the host's python3.
"""
