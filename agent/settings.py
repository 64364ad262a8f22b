"""The node agent's settings: built once from the command line and the environment
(AMBIT_AGENT_*), then passed down. `python -m agent --help` lists them all."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent import repair
from ambit import settings
from ambit.configclient.tls import ControllerTLSSettings, tls_field
from ambit.settings import non_negative, one_of, option, positive


@dataclass(frozen=True)
class AgentSettings:
    node: str = option(help="the node this agent serves", required=True)
    zds_socket: Path = option(help="ztunnel's unix socket for the pod hand-off", required=True)
    ztunnel_cgroup: Path = option(help="ztunnel's cgroup (its sockets are never captured)", required=True)
    node_ip: str = option(help="the address pods see node traffic (probes) from", required=True)
    controller: str | None = option(
        help="config stream target (host:port or unix:PATH): pods are this node's Workloads, enrolment decided "
             "by the controller")
    node_token_file: Path | None = option(
        help="with --controller: this node's credential, which the controller requires on the config stream "
             "(lab: <labdir>/<node>/bootstrap-token, the one ztunnel gives the CA)")
    controller_tls: ControllerTLSSettings = tls_field()
    store: Path | None = option(help="lab store file: run without a controller")
    config_cache: Path | None = option(
        help="with --controller: file keeping the last good Workloads, so a restart during a controller outage "
             "keeps enrolling")
    pod_paths: str = option(
        "host", "with --controller: where a pod's netns/cgroup come from; 'controller' trusts the Workload's "
                "lab-only fields (the lab writes them), 'host' finds them on this host",
        check=one_of("host", "controller"))
    pin_base: Path = option(Path("/sys/fs/bpf/ambit"), "bpffs directory for Ambit's pins")
    capture: str = option("ebpf", "capture mechanism", check=one_of("ebpf", "iptables"))
    dns_capture: bool = option(
        True, "the node default of DNS capture: enrolled pods' queries to port 53 of a resolver outside the pod go "
              "to ztunnel's DNS proxy (127.0.0.1:15053 in the pod); a pod's annotation ambient.istio.io/dns-capture "
              "\"true\"/\"false\" overrides it (--dns-capture / --no-dns-capture)", both_switches=True)
    status_file: Path | None = option(help="where the agent writes each pod's capture state")
    drain: float = option(5.0, "seconds open connections get on unenrol", check=non_negative)
    memory_trim_interval: float = option(
        60.0, "seconds between returning freed heap memory to the OS (malloc_trim), first once the eBPF programs "
              "are loaded; 0 disables", check=non_negative)
    uninstall: bool = option(False, "remove every program, link and pin, then exit")
    cleanup_on_delete: str | None = option(
        help="NAMESPACE/NAME of this agent's DaemonSet: on SIGTERM, if it is gone or being deleted, remove every "
             "program, link, pin and pod netns rule (uninstall); else keep capture (a restart or upgrade)")
    cni_socket: Path | None = option(
        help="serve the CNI plugin (agent/cni) on this unix socket: pods are captured while their sandbox is "
             "created, before any container runs")
    cni_conf_dir: Path | None = option(
        help="with --cni-socket: the node's CNI configuration directory; the plugin is chained into its first "
             "network configuration on start and removed on uninstall")
    cni_bin_dir: Path | None = option(help="with --cni-conf-dir: where the plugin file is copied")
    cni_python: str = option("/usr/bin/python3", "with --cni-conf-dir: the host's Python 3 (path on the host) "
                                                 "that runs the plugin file")
    cni_lab_store: Path | None = option(
        help="lab only: the plugin looks pods up in this lab store instead of the Kubernetes API server")
    kube_api: str | None = option(help="API server URL for --cleanup-on-delete and --repair-pods (plain HTTP: tests, "
                                       "kubectl proxy; default: in-cluster, then kubeconfig)")
    repair_pods: str = option(
        "off", "what to do with a running enrolled pod whose capture keeps failing (it runs uncaptured: plaintext "
               "from outside the mesh is not refused): 'label' labels it ambit.io/uncaptured=true with an Event, "
               "'delete' deletes it (if a controller owns it, else labels it) so it is re-created through the CNI "
               "plugin, which fails closed; 'off' only retries (ambit install sets 'delete')",
        check=one_of(*repair.MODES))
    repair_after: float = option(60.0, "seconds of failed capture before --repair-pods acts", check=non_negative)
    repair_min_attempts: int = option(3, "failed capture attempts, at least, before --repair-pods acts",
                                      check=non_negative)
    repair_burst: int = option(3, "repairs the agent may make at once", check=positive)
    repair_interval: float = option(30.0, "seconds per further repair once the burst is spent (a node whose capture "
                                          "is broken for every pod repairs them slowly)", check=non_negative)
    metrics_port: int = option(0, "serve the agent's Prometheus metrics on this port (0: off)", check=non_negative)

    def repair_settings(self) -> repair.RepairSettings:
        return repair.RepairSettings(mode=self.repair_pods, after=self.repair_after,
                                     min_attempts=self.repair_min_attempts, burst=self.repair_burst,
                                     interval=self.repair_interval)

    def check(self) -> str | None:
        if self.controller and self.store:
            return "--controller and --store are two sources of pods; give one"
        if self.cleanup_on_delete is not None and self.cleanup_on_delete.count("/") != 1:
            return f"--cleanup-on-delete {self.cleanup_on_delete!r}: expected NAMESPACE/NAME"
        if self.kube_api and not self.cleanup_on_delete and self.repair_pods == "off":
            return "--kube-api is only used by --cleanup-on-delete and --repair-pods"
        if (self.cni_conf_dir is None) != (self.cni_bin_dir is None):
            return "--cni-conf-dir and --cni-bin-dir go together"
        if (self.cni_conf_dir or self.cni_lab_store) and not self.cni_socket:
            return "--cni-conf-dir and --cni-lab-store need --cni-socket"
        if (self.config_cache or self.pod_paths != "host") and not self.controller:
            return "--config-cache and --pod-paths need --controller"
        return None


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> AgentSettings:
    return settings.load(AgentSettings, argv, environ, prog="agent", env_prefix="AMBIT_AGENT")
