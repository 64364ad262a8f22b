/* Ambit capture: shared constants, map layouts and map declarations.
 *
 * Compiled by bcc at agent start (agent/capture/programs.py). The loader defines AMBIT_PIN_DIR
 * (a string literal: /sys/fs/bpf/ambit/<node>/maps), so every map is pinned per node: a restarted
 * agent's freshly compiled programs open the *same* maps, and the enrolment state survives.
 *
 * Every layout below is mirrored with `struct` in agent/capture/maps.py; keep the two in step.
 * All structs are padded explicitly so the key bytes userspace writes are the bytes BPF hashes.
 */
#ifndef AMBIT_MAPS_H
#define AMBIT_MAPS_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>

#ifndef AMBIT_PIN_DIR
#error "AMBIT_PIN_DIR must be defined by the loader"
#endif

/* ztunnel's ports inside every pod netns. */
#define AMBIT_PORT_OUTBOUND 15001 /* plaintext outbound capture, 127.0.0.1 */
#define AMBIT_PORT_INBOUND 15006  /* plaintext inbound capture, 0.0.0.0 */
#define AMBIT_PORT_HBONE 15008    /* mTLS HBONE, never captured */
#define AMBIT_PORT_DNS 15053      /* 127.0.0.1, UDP and TCP: ztunnel's DNS proxy (captured port 53) */
#define AMBIT_PORT_DNS_QUERY 53   /* the destination port DNS capture takes (Istio's rule) */
#define AMBIT_PORT_METRICS 15020
#define AMBIT_PORT_READY 15021

/* SO_MARK ztunnel sets on its own 0.0.0.0:15006 and :15008 listeners in a pod netns. Setting a
 * mark needs CAP_NET_ADMIN, which an enrolled pod must not have: a socket that carries it is
 * ztunnel's, so a pod that binds ztunnel's ports itself ("port squatting") never receives
 * captured traffic. Its low 12 bits differ from AMBIT_MARK's (0x539/0xfff), so the delivery rule
 * never matches the sockets these listeners accept. Mirrored in agent/capture/constants.py. */
#define AMBIT_LISTENER_MARK 0x53a

#define AMBIT_AF_INET 2
#define AMBIT_LOOPBACK_NET 0x7f000000 /* 127.0.0.0/8, host order */
#define AMBIT_LOOPBACK_IP 0x7f000001  /* 127.0.0.1, host order */

/* bcc 0.26 declares bpf_get_socket_cookie() as returning u32: the cookie is 64 bits. */
static __u64 (*ambit_socket_cookie)(void *ctx) = (void *)BPF_FUNC_get_socket_cookie;

/* Per-pod config, keyed by the pod's netns cookie (bpf_get_netns_cookie in cgroup hooks). */
#define AMBIT_POD_OUTBOUND 0x1 /* connect() redirection on */
#define AMBIT_POD_INBOUND 0x2  /* TC inbound steering on */
#define AMBIT_POD_NODE_GUARD 0x4 /* ambit_tc_host guards the pod's host-side veth: a packet from
                                  * node_ip really comes from the node's own netns, so the probe
                                  * exemption may apply. Without it there is no exemption at all. */
#define AMBIT_POD_DNS 0x8      /* DNS capture on: port-53 queries go to ztunnel's DNS proxy on
                                * 127.0.0.1:15053 (the node default, or the pod's
                                * ambient.istio.io/dns-capture annotation) */
#define AMBIT_POD_INBOUND_BYPASS 0x10 /* "ingress mode" (the pod's ambient.istio.io/bypass-inbound-capture):
                                       * plaintext inbound passes to the app, not to ztunnel; only
                                       * ztunnel's own ports stay guarded (with AMBIT_POD_INBOUND) */
struct ambit_pod {
    __u32 pod_ip;  /* network order */
    __u32 node_ip; /* network order: from it, only to probe ports (AMBIT_DIR_PROBE), bypasses capture */
    __u32 flags;
    __u32 _pad;
};

/* The original destination of a redirected connect(). */
struct ambit_dst {
    __u32 ip;   /* network order */
    __u16 port; /* network order */
    __u16 _pad;
};

/* (pod netns, client port) -> original destination: what ztunnel's accepted socket can name. */
struct ambit_port_key {
    __u64 netns;
    __u16 port; /* host order: the app socket's local port == ztunnel socket's peer port */
    __u16 _pad1;
    __u32 _pad2;
};

/* Excluded ports, per pod and direction. */
#define AMBIT_DIR_OUT 1
#define AMBIT_DIR_IN 2
#define AMBIT_DIR_PROBE 3 /* the pod's kubelet probe ports: node-originated packets pass there */
struct ambit_xport_key {
    __u64 netns;
    __u16 port; /* host order */
    __u8 dir;
    __u8 _pad1;
    __u32 _pad2;
};

/* Excluded outbound CIDRs: LPM trie over (netns cookie, ipv4). The data bytes that follow
 * prefixlen are matched most-significant first, so the netns cookie (always matched in full: 64
 * bits) comes before the address; prefixlen = 64 + CIDR length. */
struct ambit_xcidr_key {
    __u32 prefixlen;
    __u32 netns_lo; /* the cookie's bytes in host order, split to avoid padding after prefixlen */
    __u32 netns_hi;
    __u32 ip; /* network order */
};

/* Userspace-only bookkeeping (never read by programs): what an agent needs to unenrol or purge a
 * pod enrolled by an earlier agent process. Keyed by the pod uid. */
#define AMBIT_UID_LEN 64
#define AMBIT_PATH_LEN 256
struct ambit_meta_key {
    char uid[AMBIT_UID_LEN];
};
struct ambit_meta {
    __u64 netns;
    __u32 pod_ip;
    __u32 node_ip;
    __u32 mode;    /* 1 = ebpf, 2 = iptables */
    __u32 tc_mode; /* 0 = none, 1 = tcx link, 2 = clsact filter */
    char netns_path[AMBIT_PATH_LEN];
    char cgroup_path[AMBIT_PATH_LEN];
};

/* Userspace-only too: the node's ztunnels, keyed by cgroup id (the cgroup v2 directory's inode).
 * Their sockets are never captured (capture hangs off pod cgroups; iptables mode RETURNs each of
 * these cgroups) and each gets its own ambit_origdst link. Usually one entry; two while a surge
 * roll of the node DaemonSet runs the old and the new ztunnel side by side. */
#define AMBIT_MAX_ZTUNNELS 16
struct ambit_ztunnel {
    char cgroup_path[AMBIT_PATH_LEN];
};

/* Counters (per-CPU array, summed by userspace). agent/capture/maps.py parses this enum. */
enum ambit_stat {
    AMBIT_STAT_REDIRECTED = 0,
    AMBIT_STAT_SKIP_NOT_ENROLLED = 1,
    AMBIT_STAT_SKIP_NOT_TCP = 2,
    AMBIT_STAT_SKIP_LOOPBACK = 3,
    AMBIT_STAT_SKIP_OWN_IP = 4,
    AMBIT_STAT_SKIP_PORT = 5,
    AMBIT_STAT_SKIP_CIDR = 6,
    AMBIT_STAT_SKIP_IPV6 = 7,
    AMBIT_STAT_SOCKOPS_MOVED = 8,
    AMBIT_STAT_SOCKOPS_CLEANED = 9,
    AMBIT_STAT_ORIGDST_HIT = 10,
    AMBIT_STAT_ORIGDST_MISS = 11,
    AMBIT_STAT_PEERNAME_REWRITTEN = 12,
    AMBIT_STAT_INBOUND_ASSIGNED = 13,
    AMBIT_STAT_INBOUND_SKIP_PORT = 14,
    AMBIT_STAT_INBOUND_SKIP_NODE = 15,
    AMBIT_STAT_INBOUND_NO_LISTENER = 16,
    AMBIT_STAT_INBOUND_ASSIGN_FAILED = 17,
    AMBIT_STAT_INBOUND_DROP_IPV6 = 18,     /* IPv6 to an enrolled pod: never delivered */
    AMBIT_STAT_INBOUND_DROP_FRAG = 19,     /* IPv4 TCP fragment or truncated header to an enrolled pod */
    AMBIT_STAT_INBOUND_SQUATTED = 20,      /* a listener on ztunnel's port that is not ztunnel's */
    AMBIT_STAT_OUT_REFUSED_IPV6 = 21,      /* native IPv6 connect() of an enrolled pod: EPERM */
    AMBIT_STAT_HOST_SPOOF_DROPPED = 22,    /* node IP as source, but not from the node's netns */
    AMBIT_STAT_BIND_REFUSED = 23,          /* an enrolled pod's bind() to ztunnel's ports: EPERM */
    AMBIT_STAT_DNS_UDP_REDIRECTED = 24,    /* UDP connect()/sendmsg() to port 53 -> 127.0.0.1:15053 */
    AMBIT_STAT_DNS_TCP_REDIRECTED = 25,    /* TCP connect() to port 53 -> 127.0.0.1:15053 */
    AMBIT_STAT_DNS_SKIP_OFF = 26,          /* port 53 from an enrolled pod whose DNS capture is off */
    AMBIT_STAT_DNS_REPLY_REWRITTEN = 27,   /* recvmsg() source 127.0.0.1:15053 -> the original resolver */
    AMBIT_STAT_DNS_NO_STORAGE = 28,        /* sk_storage full (ENOMEM): the query goes out uncaptured */
    AMBIT_STAT_INBOUND_BYPASSED = 29,      /* a SYN to an ingress-mode pod passed to the app uncaptured */
    AMBIT_STAT_DNS_SKIP_SELF = 30,         /* a UDP socket on 15053 itself: redirected, it would get its own query */
    AMBIT_STAT_MAX = 31,
};

#define AMBIT_MAX_PODS 4096

BPF_TABLE_PINNED("hash", __u64, struct ambit_pod, ambit_pods, AMBIT_MAX_PODS,
                 AMBIT_PIN_DIR "/ambit_pods");
/* pod IPv4 (network order) -> netns cookie: TC programs cannot call bpf_get_netns_cookie before
 * kernel 6.15, so inbound finds its pod by destination address (unique per node). */
BPF_TABLE_PINNED("hash", __u32, __u64, ambit_pod_ips, AMBIT_MAX_PODS,
                 AMBIT_PIN_DIR "/ambit_pod_ips");
BPF_TABLE_PINNED("lru_hash", __u64, struct ambit_dst, ambit_ck_dst, 65536,
                 AMBIT_PIN_DIR "/ambit_ck_dst");
BPF_TABLE_PINNED("lru_hash", struct ambit_port_key, struct ambit_dst, ambit_port_dst, 65536,
                 AMBIT_PIN_DIR "/ambit_port_dst");
/* The original resolver of a UDP socket whose port-53 connect() or sendmsg() was redirected to
 * 127.0.0.1:15053: socket-local storage, so the kernel frees it with the socket (UDP has no
 * sockops close callback) and nothing bounds it but the sockets themselves. recvmsg4/6 and
 * getpeername4 read it to report the original resolver. Programs only: userspace never reads it
 * (it can only be addressed by a socket fd). */
BPF_TABLE_PINNED("sk_storage", int, struct ambit_dst, ambit_dns_dst, 0,
                 AMBIT_PIN_DIR "/ambit_dns_dst", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct ambit_xport_key, __u8, ambit_xports, 16384,
                 AMBIT_PIN_DIR "/ambit_xports");
BPF_TABLE_PINNED("lpm_trie", struct ambit_xcidr_key, __u8, ambit_xcidr, 16384,
                 AMBIT_PIN_DIR "/ambit_xcidr", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("percpu_array", __u32, __u64, ambit_stats, AMBIT_STAT_MAX,
                 AMBIT_PIN_DIR "/ambit_stats");
BPF_TABLE_PINNED("hash", struct ambit_meta_key, struct ambit_meta, ambit_meta, AMBIT_MAX_PODS,
                 AMBIT_PIN_DIR "/ambit_meta");
BPF_TABLE_PINNED("hash", __u64, struct ambit_ztunnel, ambit_ztunnels, AMBIT_MAX_ZTUNNELS,
                 AMBIT_PIN_DIR "/ambit_ztunnels");

static __always_inline void ambit_count(__u32 stat)
{
    __u64 *v = ambit_stats.lookup(&stat);
    if (v)
        *v += 1;
}

#endif /* AMBIT_MAPS_H */
