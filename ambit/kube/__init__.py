"""Kubernetes list+watch shared by the controller (controller/sources/kube.py) and the agent
(agent/podsource.py): what to watch (`resource`), the reflector loop that keeps a cache of it
(`reflector`), and how to reach the API server (`client`).

`resource` imports nothing from the `kubernetes` client, so tables of watched collections (read by
RBAC generation) stay cheap to import; `reflector` and `client` bring the client in.
"""
