/* Ambit inbound capture: TC ingress on the pod's eth0, *inside* the pod netns (tcx link, or a
 * clsact direct-action filter on kernels before 6.6). Attached to enrolled pods only.
 *
 * A TCP packet to the pod IP that would start a new connection to an application port is handed
 * to ztunnel's 0.0.0.0:15006 listener with bpf_sk_assign. The kernel then builds the connection
 * with the *original* 4-tuple, so ztunnel's accepted socket reports getsockname() == the original
 * destination and getpeername() == the real client. Packets of existing connections
 * (established, request or time-wait sockets) are left to the normal demux.
 *
 * Why TC and not sk_lookup: ztunnel delivers to the app over lo preserving the client's source IP
 * (IP_TRANSPARENT + SO_MARK). sk_lookup sees that local delivery with ingress_ifindex == eth0 and
 * cannot tell it from a real client, so it loops; a TC hook on eth0 never sees lo traffic.
 *
 * Fail-closed: no path delivers a new connection to the app without ztunnel.
 *  - IPv6 is dropped (enrolled pods are IPv4-only; the agent also disables IPv6 on eth0).
 *  - IPv4 TCP fragments and truncated TCP headers are dropped: the stack would reassemble a
 *    fragmented SYN *after* this hook and hand it to the app's listener.
 *  - With no ztunnel listener on :15006 (ztunnel down, restarting, or its hand-off failed), a new
 *    connection is dropped; the client's SYN retransmits reach ztunnel once it is back.
 *  - A listener on 15006/15008 that is not ztunnel's (no AMBIT_LISTENER_MARK: the pod bound the
 *    port itself) never gets a packet.
 *  - Packets from the node IP bypass capture only on the pod's probe ports, and only when the
 *    host-side guard (hostguard.c) proves node-IP packets really come from the node's netns.
 *
 * Passed without acting: ARP and other non-IP frames; non-TCP IPv4 (UDP, ICMP: not captured, see
 * docs/ebpf.md); per-pod excluded inbound ports (the pod's own opt-out). Non-acting paths return
 * TC_ACT_UNSPEC (tcx: TCX_NEXT) so other programs on eth0 still run.
 *
 * Ingress mode (AMBIT_POD_INBOUND_BYPASS, the pod's ambient.istio.io/bypass-inbound-capture): TCP
 * to any port but ztunnel's passes to the app as it is: the pod chose to take plaintext from
 * outside the mesh itself, so STRICT and ztunnel's policies do not see it. What stays: IPv6 and
 * fragments are dropped (a reassembled fragment could reach a squatter on 15008 unseen), and
 * ztunnel's ports 15006/15008 keep their guard, so HBONE from mesh clients reaches ztunnel's
 * marked listener and never a listener the pod opened there.
 */
#include "ambit_maps.h"
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/tcp.h>

/* Ports on which ztunnel itself listens on 0.0.0.0 in the pod: HBONE and captured plaintext. */
static __always_inline int ambit_is_ztunnel_listener_port(__u16 port)
{
    return port == AMBIT_PORT_HBONE || port == AMBIT_PORT_INBOUND;
}

/* 1 when `sk` is a listening socket that ztunnel opened (marked), 0 otherwise. Consumes `sk`. */
static __always_inline int ambit_is_ztunnel_listener(struct bpf_sock *sk)
{
    int ok = 0;
    if (sk->state == BPF_TCP_LISTEN) {
        struct bpf_sock *full = bpf_sk_fullsock(sk);
        if (full && full->mark == AMBIT_LISTENER_MARK)
            ok = 1;
    }
    bpf_sk_release(sk);
    return ok;
}

int ambit_tc_in(struct __sk_buff *skb)
{
    if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
        ambit_count(AMBIT_STAT_INBOUND_DROP_IPV6);
        return TC_ACT_SHOT;
    }
    if (skb->protocol != bpf_htons(ETH_P_IP))
        return TC_ACT_UNSPEC;
    /* Headers are copied, not read in place: the skb may be non-linear, and a header that is not
     * in the linear area must not become a way around capture. */
    struct iphdr ip;
    if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr), &ip, sizeof(ip)))
        return TC_ACT_UNSPEC; /* shorter than an IPv4 header: the stack drops it */

    __u32 daddr = ip.daddr;
    __u64 *netnsp = ambit_pod_ips.lookup(&daddr);
    if (!netnsp)
        return TC_ACT_UNSPEC;
    __u64 netns = *netnsp;
    struct ambit_pod *pod = ambit_pods.lookup(&netns);
    if (!pod || !(pod->flags & AMBIT_POD_INBOUND))
        return TC_ACT_UNSPEC;
    if (ip.protocol != IPPROTO_TCP)
        return TC_ACT_UNSPEC;
    if (ip.frag_off & bpf_htons(0x3fff)) { /* MF set or a non-zero offset */
        ambit_count(AMBIT_STAT_INBOUND_DROP_FRAG);
        return TC_ACT_SHOT;
    }
    __u32 ihl = ip.ihl * 4;
    struct tcphdr tcp;
    if (ihl < sizeof(ip) || bpf_skb_load_bytes(skb, sizeof(struct ethhdr) + ihl, &tcp, sizeof(tcp))) {
        ambit_count(AMBIT_STAT_INBOUND_DROP_FRAG);
        return TC_ACT_SHOT;
    }

    __u16 dport = bpf_ntohs(tcp.dest);
    if ((pod->flags & AMBIT_POD_INBOUND_BYPASS) && !ambit_is_ztunnel_listener_port(dport)) {
        if (tcp.syn && !tcp.ack)
            ambit_count(AMBIT_STAT_INBOUND_BYPASSED);
        return TC_ACT_UNSPEC; /* ingress mode: plaintext goes to the app's own listener */
    }
    struct ambit_xport_key xk = {};
    xk.netns = netns;
    xk.port = dport;
    if (ip.saddr == pod->node_ip && (pod->flags & AMBIT_POD_NODE_GUARD)) {
        xk.dir = AMBIT_DIR_PROBE;
        if (ambit_xports.lookup(&xk)) {
            ambit_count(AMBIT_STAT_INBOUND_SKIP_NODE);
            return TC_ACT_UNSPEC;
        }
    }
    xk.dir = AMBIT_DIR_IN;
    if (ambit_xports.lookup(&xk)) {
        ambit_count(AMBIT_STAT_INBOUND_SKIP_PORT);
        return TC_ACT_UNSPEC;
    }

    struct bpf_sock_tuple t = {};
    t.ipv4.saddr = ip.saddr;
    t.ipv4.daddr = daddr;
    t.ipv4.sport = tcp.source;
    t.ipv4.dport = tcp.dest;
    int syn = tcp.syn && !tcp.ack;
    struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);

    if (ambit_is_ztunnel_listener_port(dport)) {
        /* ztunnel's own port: its listener (or a connection it accepted) takes the packet as it
         * is; any other listener on that port is a squatter and gets nothing. */
        if (!sk)
            return TC_ACT_UNSPEC; /* nobody listens: the kernel answers RST */
        if (sk->state != BPF_TCP_LISTEN) {
            bpf_sk_release(sk);
            return TC_ACT_UNSPEC;
        }
        if (ambit_is_ztunnel_listener(sk)) {
            ambit_count(AMBIT_STAT_INBOUND_SKIP_PORT);
            return TC_ACT_UNSPEC;
        }
        ambit_count(AMBIT_STAT_INBOUND_SQUATTED);
        return TC_ACT_SHOT;
    }

    if (sk) {
        __u32 state = sk->state;
        bpf_sk_release(sk);
        /* An established or request socket owns this packet: normal demux. A time-wait socket
         * does too, except for a new SYN: the kernel would hand that to the app's listener,
         * bypassing ztunnel, so it is captured like any new connection. */
        if (state != BPF_TCP_LISTEN && !(state == BPF_TCP_TIME_WAIT && syn))
            return TC_ACT_UNSPEC;
    }

    /* A listener (the app's) or nothing would take it: steal it for ztunnel's 0.0.0.0:15006. */
    t.ipv4.dport = bpf_htons(AMBIT_PORT_INBOUND);
    sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
    if (!sk) {
        ambit_count(AMBIT_STAT_INBOUND_NO_LISTENER);
        return TC_ACT_SHOT; /* fail closed: ztunnel is not serving this pod (yet) */
    }
    if (sk->state != BPF_TCP_LISTEN) {
        bpf_sk_release(sk);
        ambit_count(AMBIT_STAT_INBOUND_NO_LISTENER);
        return TC_ACT_SHOT;
    }
    struct bpf_sock *full = bpf_sk_fullsock(sk);
    if (!full || full->mark != AMBIT_LISTENER_MARK) {
        bpf_sk_release(sk);
        ambit_count(AMBIT_STAT_INBOUND_SQUATTED);
        return TC_ACT_SHOT;
    }
    long r = bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);
    if (r) {
        ambit_count(AMBIT_STAT_INBOUND_ASSIGN_FAILED);
        return TC_ACT_SHOT;
    }
    ambit_count(AMBIT_STAT_INBOUND_ASSIGNED);
    return TC_ACT_OK;
}
