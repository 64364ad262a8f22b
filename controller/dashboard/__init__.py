"""The topology view: a read-only web page the controller serves (`ambit dashboard` prints its URL).

graph.py builds nodes and edges from per-second rates of Istio's standard metrics (pure);
rates.py turns scrapes into rates (pure); sources.py gets them from Prometheus or from the
components; accesslogs.py finds a node's access-log lines; server.py serves the page and its JSON.
"""
