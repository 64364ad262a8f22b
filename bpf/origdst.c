/* Ambit original-destination recovery, attached to *ztunnel's* cgroup (cgroup/getsockopt).
 *
 * ztunnel calls getsockopt(SOL_IP, SO_ORIGINAL_DST) on a socket it accepted on 127.0.0.1:15001 (or
 * on its DNS proxy's 127.0.0.1:15053, for a captured DNS-over-TCP connection) in a pod netns,
 * exactly as it would under iptables REDIRECT. The kernel's own answer (conntrack, or
 * ENOENT without NAT) is replaced by the destination ambit_connect4 saved, found by
 * (netns cookie, peer port). Anything else is left untouched, so the same ztunnel code works in
 * the iptables capture mode, where conntrack answers.
 *
 * Accepted sockets inherit the cgroup of the listener, so ztunnel must already be in its own
 * cgroup when it creates its listeners.
 */
#include "ambit_maps.h"

#define AMBIT_SOL_IP 0
#define AMBIT_SO_ORIGINAL_DST 80

struct ambit_sockaddr_in {
    __u16 sin_family;
    __u16 sin_port;
    __u32 sin_addr;
    __u8 zero[8];
};

int ambit_origdst(struct bpf_sockopt *ctx)
{
    if (ctx->level != AMBIT_SOL_IP || ctx->optname != AMBIT_SO_ORIGINAL_DST)
        return 1;
    struct bpf_sock *sk = ctx->sk;
    if (!sk || sk->family != AMBIT_AF_INET || (sk->src_port != AMBIT_PORT_OUTBOUND && sk->src_port != AMBIT_PORT_DNS))
        return 1;
    struct ambit_port_key k = {};
    k.netns = bpf_get_netns_cookie(ctx);
    k.port = bpf_ntohs((__u16)sk->dst_port); /* dst_port: network order in the low 16 bits */
    struct ambit_dst *d = ambit_port_dst.lookup(&k);
    if (!d) {
        ambit_count(AMBIT_STAT_ORIGDST_MISS);
        return 1;
    }
    struct ambit_sockaddr_in *sa = ctx->optval;
    if ((void *)(sa + 1) > ctx->optval_end)
        return 1;
    sa->sin_family = AMBIT_AF_INET;
    sa->sin_port = d->port;
    sa->sin_addr = d->ip;
    __builtin_memset(sa->zero, 0, sizeof(sa->zero));
    /* Two separate 4-byte stores: clang would merge them into one 8-byte store, which the
     * verifier rejects ("invalid bpf_context access off=32 size=8"). */
    *(volatile __s32 *)&ctx->optlen = sizeof(*sa);
    *(volatile __s32 *)&ctx->retval = 0;
    ambit_count(AMBIT_STAT_ORIGDST_HIT);
    return 1;
}
