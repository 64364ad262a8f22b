/* Ambit node-IP guard: TC *egress* on the host-side peer of an enrolled pod's veth (in the node's
 * netns), attached by the agent when it can find that peer.
 *
 * Kubelet probes come from the node IP, and ambit_tc_in lets them reach the pod's probe ports
 * uncaptured. Inside the pod, a packet from the node's own netns and a packet that another pod
 * (same node, bridged; or another node, routed) sent with the node IP as a *spoofed* source look
 * the same. On the host side they do not: a packet the node's own stack sends has no ingress
 * device (skb->ingress_ifindex == 0), while a packet that came in through any interface (another
 * pod's veth, the uplink) carries that interface's index, even after bridging or routing. This is
 * the eBPF form of Istio's `-m owner --socket-exists` on its probe SNAT rule.
 *
 * So: towards an enrolled pod, a packet with the node IP as source that entered the node from
 * outside is dropped. Everything else passes untouched (TC_ACT_UNSPEC: other programs still run).
 */
#include "ambit_maps.h"
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/pkt_cls.h>

int ambit_tc_host(struct __sk_buff *skb)
{
    if (skb->protocol != bpf_htons(ETH_P_IP))
        return TC_ACT_UNSPEC;
    struct iphdr ip;
    if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr), &ip, sizeof(ip)))
        return TC_ACT_UNSPEC;
    __u32 daddr = ip.daddr;
    __u64 *netnsp = ambit_pod_ips.lookup(&daddr);
    if (!netnsp)
        return TC_ACT_UNSPEC;
    __u64 netns = *netnsp;
    struct ambit_pod *pod = ambit_pods.lookup(&netns);
    if (!pod || ip.saddr != pod->node_ip)
        return TC_ACT_UNSPEC;
    if (skb->ingress_ifindex == 0)
        return TC_ACT_UNSPEC; /* sent by the node's own netns: a real probe */
    ambit_count(AMBIT_STAT_HOST_SPOOF_DROPPED);
    return TC_ACT_SHOT;
}
