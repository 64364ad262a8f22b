"""ztunnel's DNS proxy: what a pod's captured DNS queries (UDP and TCP to port 53, redirected to
127.0.0.1:15053 in its netns by the capture layer) are answered with.

Istio ambient's behaviour (istio/ztunnel src/dns): the hostnames of the mesh's Services and
ServiceEntries visible to the client pod's namespace are answered here, authoritatively, with
their VIPs (a headless Service's with its ready endpoints' addresses); everything else is
forwarded to the upstream resolvers from inside the pod's netns. A ServiceEntry host without an
`addresses` VIP then resolves to one the controller allocated, so a connection to it is captured
and routed like any Service's.

- names.py: the aliases a queried name may stand for (search domains, short forms; pure);
- lookup.py: which Service a name is, for a client namespace, and its addresses (pure);
- wire.py: queries and replies in the wire format, through dnspython (pure);
- forwarder.py: upstream queries over UDP and TCP from a pod's netns (asyncio);
- server.py: the per-pod UDP and TCP endpoints, and the node-wide proxy they share (asyncio);
- metrics.py: Istio's `istio_dns_*` families;
- settings.py: `--dns-*` and the upstream resolvers' defaults.
"""
