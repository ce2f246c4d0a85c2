/*
 * svcfp data plane: what every architecture's program shares — the compile-time constants and
 * their defaults, the contract annotation, the header types. Included by fingerprint.p4
 * (v1model) and fingerprint_tna.p4 (TNA / T2NA); the contract is p4src/README.md.
 */

#ifndef SVCFP_HEADERS_P4
#define SVCFP_HEADERS_P4

#ifndef MAX_DEVICES
#define MAX_DEVICES 1024
#endif

#ifndef MAX_SERVICES
#define MAX_SERVICES 256
#endif

#ifndef DIGEST_CACHE_SIZE
#define DIGEST_CACHE_SIZE 256
#endif

#ifndef DIGEST_REPEAT_US
#define DIGEST_REPEAT_US 5000000
#endif

#ifndef FLOOD_GROUP
#define FLOOD_GROUP 1
#endif


// The compile-time constants the control plane and the reference switch need, carried into the
// P4Info (pkg_info.structured_annotations) with the values this build was compiled with. Every
// architecture's `main` carries it.
#define SVCFP_CONTRACT \
    @svcfp_contract[max_devices=MAX_DEVICES, max_services=MAX_SERVICES, \
                    digest_cache_size=DIGEST_CACHE_SIZE, digest_repeat_us=DIGEST_REPEAT_US, \
                    flood_group=FLOOD_GROUP]

const bit<16> ETHERTYPE_IPV4 = 0x0800;
const bit<16> ETHERTYPE_ARP  = 0x0806;
const bit<16> ETHERTYPE_VLAN = 0x8100;
const bit<16> ETHERTYPE_IPV6 = 0x86DD;

const bit<8> PROTO_ICMP   = 1;
const bit<8> PROTO_TCP    = 6;
const bit<8> PROTO_UDP    = 17;
const bit<8> PROTO_ICMPV6 = 58;

header ethernet_t {
    bit<48> dst;
    bit<48> src;
    bit<16> ether_type;
}

header vlan_t {
    bit<3>  pcp;
    bit<1>  dei;
    bit<12> vid;
    bit<16> ether_type;
}

header arp_t {
    bit<16> htype;
    bit<16> ptype;
    bit<8>  hlen;
    bit<8>  plen;
    bit<16> oper;
    bit<48> sha;
    bit<32> spa;
    bit<48> tha;
    bit<32> tpa;
}

header ipv4_t {
    bit<4>  version;
    bit<4>  ihl;
    bit<8>  diffserv;
    bit<16> total_len;
    bit<16> identification;
    bit<3>  flags;
    bit<13> frag_offset;
    bit<8>  ttl;
    bit<8>  protocol;
    bit<16> hdr_checksum;
    bit<32> src_addr;
    bit<32> dst_addr;
}

// Up to 40 bytes of options: IHL 15 is 60 bytes, 20 of them the fixed header.
header ipv4_options_t {
    varbit<320> options;
}

header ipv6_t {
    bit<4>   version;
    bit<8>   traffic_class;
    bit<20>  flow_label;
    bit<16>  payload_len;
    bit<8>   next_hdr;
    bit<8>   hop_limit;
    bit<128> src_addr;
    bit<128> dst_addr;
}

header tcp_t {
    bit<16> src_port;
    bit<16> dst_port;
    bit<32> seq_no;
    bit<32> ack_no;
    bit<4>  data_offset;
    bit<4>  res;
    bit<8>  flags;
    bit<16> window;
    bit<16> checksum;
    bit<16> urgent_ptr;
}

header udp_t {
    bit<16> src_port;
    bit<16> dst_port;
    bit<16> length;
    bit<16> checksum;
}

// ICMP and ICMPv6 share their first four bytes; only those are parsed.
header icmp_t {
    bit<8>  icmp_type;
    bit<8>  icmp_code;
    bit<16> checksum;
}

struct headers_t {
    ethernet_t     ethernet;
    vlan_t         vlan;
    arp_t          arp;
    ipv4_t         ipv4;
    ipv4_options_t ipv4_options;
    ipv6_t         ipv6;
    tcp_t          tcp;
    udp_t          udp;
    icmp_t         icmp;
}

// The new-device digest: its type name is the digest's P4Runtime name.
struct new_device_t {
    bit<48> mac;
    bit<9>  port;
}

#endif  // SVCFP_HEADERS_P4
