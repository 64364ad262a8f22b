/* Ambit inbound capture: TC ingress on the pod's eth0, *inside* the pod netns (tcx link, or a
 * clsact direct-action filter on kernels before 6.6).
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
 * Skipped: ztunnel's own ports (15008 HBONE, 15006, 15001, 15020, 15021), packets from the node
 * IP (kubelet probes), per-pod excluded inbound ports. Fail-open: when ztunnel has no 15006
 * listener in the pod, packets go to the app as if Ambit were absent (counted as no_listener).
 *
 * Non-acting paths return TC_ACT_UNSPEC (tcx: TCX_NEXT) so other programs on eth0 still run.
 */
#include "ambit_maps.h"
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/tcp.h>

static __always_inline int ambit_is_ztunnel_port(__u16 port)
{
    return port == AMBIT_PORT_HBONE || port == AMBIT_PORT_INBOUND || port == AMBIT_PORT_OUTBOUND ||
           port == AMBIT_PORT_METRICS || port == AMBIT_PORT_READY;
}

int ambit_tc_in(struct __sk_buff *skb)
{
    if (skb->protocol != bpf_htons(ETH_P_IP))
        return TC_ACT_UNSPEC;
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return TC_ACT_UNSPEC;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end)
        return TC_ACT_UNSPEC;
    if (ip->protocol != IPPROTO_TCP || (ip->frag_off & bpf_htons(0x1fff)))
        return TC_ACT_UNSPEC;
    __u32 ihl = ip->ihl * 4;
    if (ihl < sizeof(*ip))
        return TC_ACT_UNSPEC;
    struct tcphdr *tcp = (void *)ip + ihl;
    if ((void *)(tcp + 1) > end)
        return TC_ACT_UNSPEC;

    __u32 daddr = ip->daddr;
    __u64 *netnsp = ambit_pod_ips.lookup(&daddr);
    if (!netnsp)
        return TC_ACT_UNSPEC;
    __u64 netns = *netnsp;
    struct ambit_pod *pod = ambit_pods.lookup(&netns);
    if (!pod || !(pod->flags & AMBIT_POD_INBOUND))
        return TC_ACT_UNSPEC;

    __u16 dport = bpf_ntohs(tcp->dest);
    if (ambit_is_ztunnel_port(dport)) {
        ambit_count(AMBIT_STAT_INBOUND_SKIP_PORT);
        return TC_ACT_UNSPEC;
    }
    if (ip->saddr == pod->node_ip) {
        ambit_count(AMBIT_STAT_INBOUND_SKIP_NODE);
        return TC_ACT_UNSPEC;
    }
    struct ambit_xport_key xk = {};
    xk.netns = netns;
    xk.port = dport;
    xk.dir = AMBIT_DIR_IN;
    if (ambit_xports.lookup(&xk)) {
        ambit_count(AMBIT_STAT_INBOUND_SKIP_PORT);
        return TC_ACT_UNSPEC;
    }

    struct bpf_sock_tuple t = {};
    t.ipv4.saddr = ip->saddr;
    t.ipv4.daddr = daddr;
    t.ipv4.sport = tcp->source;
    t.ipv4.dport = tcp->dest;
    int syn = tcp->syn && !tcp->ack;
    struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
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
        return TC_ACT_UNSPEC; /* fail-open: no ztunnel in this pod (yet) */
    }
    if (sk->state != BPF_TCP_LISTEN) {
        bpf_sk_release(sk);
        ambit_count(AMBIT_STAT_INBOUND_NO_LISTENER);
        return TC_ACT_UNSPEC;
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
