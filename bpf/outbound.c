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
 * ztunnel runs in its own cgroup, so its own connect()s never reach these programs: no loop.
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

/* Record the original destination and decide; returns 1 when the caller must rewrite. */
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
    ambit_count(AMBIT_STAT_REDIRECTED);
    return 1;
}

int ambit_connect4(struct bpf_sock_addr *ctx)
{
    if (ctx->protocol != IPPROTO_TCP) {
        ambit_count(AMBIT_STAT_SKIP_NOT_TCP);
        return 1;
    }
    if (ambit_out_capture(ctx, ctx->user_ip4, ctx->user_port)) {
        ctx->user_ip4 = bpf_htonl(AMBIT_LOOPBACK_IP);
        ctx->user_port = bpf_htons(AMBIT_PORT_OUTBOUND);
    }
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
 * (EPERM), like connect6 refuses it: enrolled pods are IPv4-only in both directions. */
int ambit_sendmsg6(struct bpf_sock_addr *ctx)
{
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
    if (ctx->protocol != IPPROTO_TCP) {
        ambit_count(AMBIT_STAT_SKIP_NOT_TCP);
        return 1;
    }
    if (ambit_out_capture(ctx, ctx->user_ip6[3], ctx->user_port)) {
        ctx->user_ip6[3] = bpf_htonl(AMBIT_LOOPBACK_IP);
        ctx->user_port = bpf_htons(AMBIT_PORT_OUTBOUND);
    }
    return 1;
}

/* cgroup/bind4, cgroup/bind6: an enrolled pod may not bind ztunnel's ports (15001, 15006, 15008)
 * itself, so it cannot squat them while ztunnel restarts (bind() fails with EPERM). ztunnel runs in
 * its own cgroup and never meets this. A pod that bound one before it was enrolled still can hold
 * it: ambit_tc_in then drops its inbound, and the agent retries the hand-off (agent/handoff.py). */
static __always_inline int ambit_bind(struct bpf_sock_addr *ctx)
{
    __u16 port = bpf_ntohs((__u16)ctx->user_port);
    if (port != AMBIT_PORT_OUTBOUND && port != AMBIT_PORT_INBOUND && port != AMBIT_PORT_HBONE)
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
    if (ctx->user_ip4 != bpf_htonl(AMBIT_LOOPBACK_IP) || ctx->user_port != bpf_htons(AMBIT_PORT_OUTBOUND))
        return 1;
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 1;
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
