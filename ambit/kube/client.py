"""How the controller and the agent reach the API server: the official client's ApiClient, which
brings auth, TLS and kubeconfig/in-cluster configuration (never hand-rolled)."""

from __future__ import annotations

from kubernetes import client as kclient
from kubernetes import config as kconfig


def make_api_client(host: str | None = None, kubeconfig: str | None = None,
                    context: str | None = None) -> kclient.ApiClient:
    """An ApiClient for `host` (plain HTTP: tests, `kubectl proxy`), else in-cluster credentials (a
    pod's service account), else `kubeconfig` / $KUBECONFIG / ~/.kube/config. A `context` names a
    kubeconfig context, so it skips the in-cluster credentials as kubectl --context does."""
    cfg = kclient.Configuration()
    if host:
        cfg.host = host
    else:
        try:
            if context:
                raise kconfig.ConfigException("a kubeconfig context was asked for")
            kconfig.load_incluster_config(client_configuration=cfg)
        except kconfig.ConfigException:
            kconfig.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    return kclient.ApiClient(cfg)
