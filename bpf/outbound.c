/* Ambit outbound capture, attached to each enrolled pod's cgroup (BPF_F_ALLOW_MULTI via bpf_link).
 *
 *   ambit_connect4   cgroup/connect4: save the original destination under the socket cookie and
 *                    rewrite it to 127.0.0.1:15001, where ztunnel listens inside the pod netns.
 *   ambit_connect6   cgroup/connect6: the same for v4-mapped destinations (::ffff:a.b.c.d) of
 *                    dual-stack sockets; native IPv6 (TCP and UDP, except ::1) is refused with
 *                    EPERM, because enrolled pods are IPv4-only (counted as out_refused_ipv6).
 *   ambit_sockops    TCP_CONNECT_CB: the source port is now known, so move the entry to
 *                    (netns cookie, source port), the key ztunnel can name from its accepted
 *                    socket; STATE_CB (TCP_CLOSE): delete it again.
 *   ambit_peername4  cgroup/getpeername4: the app's getpeername() reports the original peer.
 *
 * DNS capture (pods with AMBIT_POD_DNS; Istio's dnsCapture): queries to port 53 of a resolver
 * outside the pod go to ztunnel's DNS proxy on 127.0.0.1:15053 in the pod netns instead.
 *   TCP              connect4/connect6 send it to 15053 rather than 15001; sockops and
 *                    getpeername4 treat it like any redirected connection.
 *   UDP              connect4/connect6 (connected sockets) and the new sendmsg4/sendmsg6
 *                    (unconnected sendto()) rewrite the destination and keep the original resolver
 *                    in the socket's own storage (ambit_dns_dst, freed with the socket);
 *   ambit_recvmsg4/6 make a reply from 127.0.0.1:15053 come from that resolver, so resolvers that
 *                    check the reply's source (glibc, dig) accept it; getpeername4 reports it too.
 *
 * ztunnel runs in its own cgroup, so its own connect()s (and its DNS proxy's upstream queries)
 * never reach these programs: no loop.
 */
#include "ambit_maps.h"

/* The shared skip logic; returns 0 to capture, or the AMBIT_STAT_* reason to leave it alone.
 * ip and port are in network order, exactly as the sock_addr context holds them. */
static __always_inline int ambit_out_skip(__u64 netns, struct ambit_pod *pod, __u32 ip, __u16 port)
{
    __u32 hip = bpf_ntohl(ip);
    if ((hip & 0xff000000) == AMBIT_LOOPBACK_NET || hip == 0)
        return AMBIT_STAT_SKIP_LOOPBACK;
    if (ip == pod->pod_ip)
        return AMBIT_STAT_SKIP_OWN_IP;
    struct ambit_xport_key xk = {};
    xk.netns = netns;
    xk.port = bpf_ntohs(port);
    xk.dir = AMBIT_DIR_OUT;
    if (ambit_xports.lookup(&xk))
        return AMBIT_STAT_SKIP_PORT;
    struct ambit_xcidr_key ck = {};
    ck.prefixlen = 96;
    ck.netns_lo = (__u32)netns;
    ck.netns_hi = (__u32)(netns >> 32);
    ck.ip = ip;
    if (ambit_xcidr.lookup(&ck))
        return AMBIT_STAT_SKIP_CIDR;
    return 0;
}

/* Record the original destination of a TCP connect() and decide. Returns the port (host order)
 * to redirect to on 127.0.0.1: 15001, or 15053 for port 53 of a pod with DNS capture on; 0 to
 * leave the connect() alone. */
static __always_inline int ambit_out_capture(void *ctx, __u32 ip, __u32 port32)
{
    __u64 netns = bpf_get_netns_cookie(ctx);
    struct ambit_pod *pod = ambit_pods.lookup(&netns);
    if (!pod || !(pod->flags & AMBIT_POD_OUTBOUND)) {
        ambit_count(AMBIT_STAT_SKIP_NOT_ENROLLED);
        return 0;
    }
    __u16 port = (__u16)port32;
    int why = ambit_out_skip(netns, pod, ip, port);
    if (why) {
        ambit_count(why);
        return 0;
    }
    __u64 ck = ambit_socket_cookie(ctx);
    struct ambit_dst d = {};
    d.ip = ip;
    d.port = port;
    ambit_ck_dst.update(&ck, &d);
    if (port == bpf_htons(AMBIT_PORT_DNS_QUERY) && (pod->flags & AMBIT_POD_DNS)) {
        ambit_count(AMBIT_STAT_DNS_TCP_REDIRECTED);
        return AMBIT_PORT_DNS;
    }
    ambit_count(AMBIT_STAT_REDIRECTED);
    return AMBIT_PORT_OUTBOUND;
}

/* A UDP datagram or connect() to (ip, port), network order: 1 when it is a DNS query of an
 * enrolled pod with DNS capture on, which the caller redirects to 127.0.0.1:15053. The original
 * resolver is then in the socket's ambit_dns_dst storage. The same skips as TCP apply (loopback
 * and 0.0.0.0: a node-local resolver such as 127.0.0.53 stays; the pod's own IP; excluded ports
 * and CIDRs), which is Istio's "not out via lo" for UDP. */
static __always_inline int ambit_dns_udp(struct bpf_sock_addr *ctx, __u32 ip, __u32 port32)
{
    __u16 port = (__u16)port32;
    if (port != bpf_htons(AMBIT_PORT_DNS_QUERY))
        return 0;
    __u64 netns = bpf_get_netns_cookie(ctx);
    struct ambit_pod *pod = ambit_pods.lookup(&netns);
    if (!pod || !(pod->flags & AMBIT_POD_OUTBOUND)) {
        ambit_count(AMBIT_STAT_SKIP_NOT_ENROLLED);
        return 0;
    }
    if (!(pod->flags & AMBIT_POD_DNS)) {
        ambit_count(AMBIT_STAT_DNS_SKIP_OFF);
        return 0;
    }
    int why = ambit_out_skip(netns, pod, ip, port);
    if (why) {
        ambit_count(why);
        return 0;
    }
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 0;
    /* A socket whose own port is 15053 (the kernel can give it one: ztunnel's UDP socket there has
     * SO_REUSEPORT, so a client's SO_REUSEPORT socket of the same uid may share the port) would
     * send its query to itself, and read it back as the answer: it goes out uncaptured instead. */
    if (sk->src_port == AMBIT_PORT_DNS) {
        ambit_count(AMBIT_STAT_DNS_SKIP_SELF);
        return 0;
    }
    struct ambit_dst *d = ambit_dns_dst.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (!d) {
        ambit_count(AMBIT_STAT_DNS_NO_STORAGE);
        return 0;
    }
    d->ip = ip;
    d->port = port;
    ambit_count(AMBIT_STAT_DNS_UDP_REDIRECTED);
    return 1;
}

/* The port on 127.0.0.1 a connect() to (ip, port) must go to, 0 for none: TCP per
 * ambit_out_capture, UDP only for a captured DNS query. */
static __always_inline int ambit_connect_target(struct bpf_sock_addr *ctx, __u32 ip, __u32 port)
{
    if (ctx->protocol == IPPROTO_UDP) {
        if (ambit_dns_udp(ctx, ip, port))
            return AMBIT_PORT_DNS;
        /* Connected elsewhere now: a resolver saved for an earlier connect() no longer applies. */
        if (ctx->sk)
            ambit_dns_dst.sk_storage_delete(ctx->sk);
        ambit_count(AMBIT_STAT_SKIP_NOT_TCP);
        return 0;
    }
    if (ctx->protocol != IPPROTO_TCP) {
        ambit_count(AMBIT_STAT_SKIP_NOT_TCP);
        return 0;
    }
    return ambit_out_capture(ctx, ip, port);
}

int ambit_connect4(struct bpf_sock_addr *ctx)
{
    int to = ambit_connect_target(ctx, ctx->user_ip4, ctx->user_port);
    if (to) {
        ctx->user_ip4 = bpf_htonl(AMBIT_LOOPBACK_IP);
        ctx->user_port = bpf_htons(to);
    }
    return 1;
}

/* cgroup/sendmsg4: an unconnected UDP sendto() of a DNS query goes to the DNS proxy. Other
 * datagrams are not counted (this runs per datagram). */
int ambit_sendmsg4(struct bpf_sock_addr *ctx)
{
    if (ctx->protocol == IPPROTO_UDP && ambit_dns_udp(ctx, ctx->user_ip4, ctx->user_port)) {
        ctx->user_ip4 = bpf_htonl(AMBIT_LOOPBACK_IP);
        ctx->user_port = bpf_htons(AMBIT_PORT_DNS);
    }
    return 1;
}

/* The original resolver of a UDP socket whose query was redirected, if the datagram at hand
 * (source ip, port: network order) is the DNS proxy's reply. */
static __always_inline struct ambit_dst *ambit_dns_reply_src(struct bpf_sock_addr *ctx, __u32 ip, __u32 port)
{
    if (ip != bpf_htonl(AMBIT_LOOPBACK_IP) || port != bpf_htons(AMBIT_PORT_DNS))
        return 0;
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 0;
    return ambit_dns_dst.sk_storage_get(sk, 0, 0);
}

/* cgroup/recvmsg4: the DNS proxy's reply reads as coming from the resolver the app asked. */
int ambit_recvmsg4(struct bpf_sock_addr *ctx)
{
    struct ambit_dst *d = ambit_dns_reply_src(ctx, ctx->user_ip4, ctx->user_port);
    if (!d)
        return 1;
    ctx->user_ip4 = d->ip;
    ctx->user_port = d->port;
    ambit_count(AMBIT_STAT_DNS_REPLY_REWRITTEN);
    return 1;
}

/* cgroup/recvmsg6: the same for a dual-stack socket, which sees ::ffff:127.0.0.1. */
int ambit_recvmsg6(struct bpf_sock_addr *ctx)
{
    if (ctx->user_ip6[0] != 0 || ctx->user_ip6[1] != 0 || ctx->user_ip6[2] != bpf_htonl(0xffff))
        return 1;
    struct ambit_dst *d = ambit_dns_reply_src(ctx, ctx->user_ip6[3], ctx->user_port);
    if (!d)
        return 1;
    ctx->user_ip6[3] = d->ip;
    ctx->user_port = d->port;
    ambit_count(AMBIT_STAT_DNS_REPLY_REWRITTEN);
    return 1;
}

/* 1 when an IPv6 destination may be used by an enrolled pod: ::1 and :: stay inside the pod,
 * v4-mapped travels as IPv4. Native IPv6 would leave the pod uncaptured. */
static __always_inline int ambit_v6_allowed(struct bpf_sock_addr *ctx)
{
    if (ctx->user_ip6[0] != 0 || ctx->user_ip6[1] != 0)
        return 0;
    if (ctx->user_ip6[2] == bpf_htonl(0xffff))
        return 1;
    return ctx->user_ip6[2] == 0 && (ctx->user_ip6[3] == bpf_htonl(1) || ctx->user_ip6[3] == 0);
}

/* cgroup/sendmsg6: unconnected UDP sendmsg() to native IPv6 from an enrolled pod is refused
 * (EPERM), like connect6 refuses it: enrolled pods are IPv4-only in both directions. A DNS query
 * to a v4-mapped resolver goes to the DNS proxy, as in sendmsg4. */
int ambit_sendmsg6(struct bpf_sock_addr *ctx)
{
    if (ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 && ctx->user_ip6[2] == bpf_htonl(0xffff)) {
        if (ctx->protocol == IPPROTO_UDP && ambit_dns_udp(ctx, ctx->user_ip6[3], ctx->user_port)) {
            ctx->user_ip6[3] = bpf_htonl(AMBIT_LOOPBACK_IP);
            ctx->user_port = bpf_htons(AMBIT_PORT_DNS);
        }
        return 1;
    }
    if (ambit_v6_allowed(ctx))
        return 1;
    __u64 netns = bpf_get_netns_cookie(ctx);
    struct ambit_pod *pod = ambit_pods.lookup(&netns);
    if (!pod || !(pod->flags & AMBIT_POD_OUTBOUND))
        return 1;
    ambit_count(AMBIT_STAT_OUT_REFUSED_IPV6);
    return 0;
}

int ambit_connect6(struct bpf_sock_addr *ctx)
{
    /* Only v4-mapped (::ffff:a.b.c.d) destinations travel as IPv4 and can reach ztunnel's
     * 127.0.0.1 listener. ::1 stays inside the pod. Native IPv6 would leave the pod uncaptured:
     * enrolled pods are IPv4-only, so it is refused (connect() fails with EPERM). */
    if (ctx->user_ip6[0] != 0 || ctx->user_ip6[1] != 0 || ctx->user_ip6[2] != bpf_htonl(0xffff)) {
        if (ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 && ctx->user_ip6[2] == 0 &&
            (ctx->user_ip6[3] == bpf_htonl(1) || ctx->user_ip6[3] == 0)) { /* ::1, :: */
            ambit_count(AMBIT_STAT_SKIP_IPV6);
            return 1;
        }
        __u64 netns = bpf_get_netns_cookie(ctx);
        struct ambit_pod *pod = ambit_pods.lookup(&netns);
        if (!pod || !(pod->flags & AMBIT_POD_OUTBOUND)) {
            ambit_count(AMBIT_STAT_SKIP_NOT_ENROLLED);
            return 1;
        }
        ambit_count(AMBIT_STAT_OUT_REFUSED_IPV6);
        return 0;
    }
    int to = ambit_connect_target(ctx, ctx->user_ip6[3], ctx->user_port);
    if (to) {
        ctx->user_ip6[3] = bpf_htonl(AMBIT_LOOPBACK_IP);
        ctx->user_port = bpf_htons(to);
    }
    return 1;
}

/* cgroup/bind4, cgroup/bind6: an enrolled pod may not bind ztunnel's ports (15001, 15006, 15008,
 * and 15053, its DNS proxy's: whether or not the pod's DNS capture is on)
 * itself, so it cannot squat them while ztunnel restarts (bind() fails with EPERM). ztunnel runs in
 * its own cgroup and never meets this. A pod that bound one before it was enrolled still can hold
 * it: ambit_tc_in then drops its inbound, and the agent retries the hand-off (agent/handoff.py). */
static __always_inline int ambit_bind(struct bpf_sock_addr *ctx)
{
    __u16 port = bpf_ntohs((__u16)ctx->user_port);
    if (port != AMBIT_PORT_OUTBOUND && port != AMBIT_PORT_INBOUND && port != AMBIT_PORT_HBONE &&
        port != AMBIT_PORT_DNS)
        return 1;
    __u64 netns = bpf_get_netns_cookie(ctx);
    struct ambit_pod *pod = ambit_pods.lookup(&netns);
    if (!pod || !(pod->flags & AMBIT_POD_INBOUND))
        return 1;
    ambit_count(AMBIT_STAT_BIND_REFUSED);
    return 0;
}

int ambit_bind4(struct bpf_sock_addr *ctx)
{
    return ambit_bind(ctx);
}

int ambit_bind6(struct bpf_sock_addr *ctx)
{
    return ambit_bind(ctx);
}

int ambit_sockops(struct bpf_sock_ops *skops)
{
    __u32 op = skops->op;
    if (op == BPF_SOCK_OPS_TCP_CONNECT_CB) {
        __u64 ck = ambit_socket_cookie(skops);
        struct ambit_dst *d = ambit_ck_dst.lookup(&ck);
        if (!d)
            return 1;
        struct ambit_port_key k = {};
        k.netns = bpf_get_netns_cookie(skops);
        k.port = (__u16)skops->local_port;
        struct ambit_dst v = *d;
        ambit_port_dst.update(&k, &v);
        ambit_ck_dst.delete(&ck);
        /* Ask for state callbacks on this socket only, so the entry goes when it closes. */
        bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
        ambit_count(AMBIT_STAT_SOCKOPS_MOVED);
        return 1;
    }
    if (op == BPF_SOCK_OPS_STATE_CB && skops->args[1] == BPF_TCP_CLOSE) {
        struct ambit_port_key k = {};
        k.netns = bpf_get_netns_cookie(skops);
        k.port = (__u16)skops->local_port;
        if (ambit_port_dst.delete(&k) == 0)
            ambit_count(AMBIT_STAT_SOCKOPS_CLEANED);
    }
    return 1;
}

int ambit_peername4(struct bpf_sock_addr *ctx)
{
    if (ctx->user_ip4 != bpf_htonl(AMBIT_LOOPBACK_IP))
        return 1;
    if (ctx->user_port != bpf_htons(AMBIT_PORT_OUTBOUND) && ctx->user_port != bpf_htons(AMBIT_PORT_DNS))
        return 1;
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 1;
    if (ctx->protocol == IPPROTO_UDP) {   /* a connected UDP socket whose DNS query was redirected */
        struct ambit_dst *u = ambit_dns_dst.sk_storage_get(sk, 0, 0);
        if (!u)
            return 1;
        ctx->user_ip4 = u->ip;
        ctx->user_port = u->port;
        ambit_count(AMBIT_STAT_PEERNAME_REWRITTEN);
        return 1;
    }
    struct ambit_port_key k = {};
    k.netns = bpf_get_netns_cookie(ctx);
    k.port = (__u16)sk->src_port;
    struct ambit_dst *d = ambit_port_dst.lookup(&k);
    if (!d)
        return 1;
    ctx->user_ip4 = d->ip;
    ctx->user_port = d->port;
    ambit_count(AMBIT_STAT_PEERNAME_REWRITTEN);
    return 1;
}
