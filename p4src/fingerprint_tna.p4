/*
 * svcfp data plane for Tofino (P4_16, TNA; T2NA for Tofino 2): maps every packet to
 * (device, service) and counts it — the same tables, actions, counter and digest, under the same
 * P4Runtime names, as fingerprint.p4 (v1model). The constants, header types and parse graph are
 * the shared svcfp_headers.p4 and svcfp_parser.p4; what TNA forces to differ is written down in
 * p4src/README.md ("Tofino").
 */

#include <core.p4>
#if __TARGET_TOFINO__ == 2
#include <t2na.p4>
#else
#include <tna.p4>
#endif

// The largest layout with 256 services that fits Tofino 1 (p4src/README.md, "Tofino"); the
// v1model defaults of svcfp_headers.p4 (1024 × 256) do not: the counter must sit in one stage.
#ifndef MAX_DEVICES
#define MAX_DEVICES 256
#endif
#ifndef MAX_SERVICES
#define MAX_SERVICES 256
#endif

#include "svcfp_headers.p4"

// Tofino indexes the counter with the concatenation device id ++ service id, not a product:
// MAX_SERVICES must be a power of two (SERVICE_BITS wide), device ids take DEVICE_BITS bits
// (MAX_DEVICES need not be a power of two: ids stay below it, so cells stay below
// MAX_DEVICES * MAX_SERVICES). The cache slot is a mask of the hash, so DIGEST_CACHE_SIZE is a
// power of two too. The v1model program takes any sizes.
#if MAX_SERVICES == 2
#define SERVICE_BITS 1
#elif MAX_SERVICES == 4
#define SERVICE_BITS 2
#elif MAX_SERVICES == 8
#define SERVICE_BITS 3
#elif MAX_SERVICES == 16
#define SERVICE_BITS 4
#elif MAX_SERVICES == 32
#define SERVICE_BITS 5
#elif MAX_SERVICES == 64
#define SERVICE_BITS 6
#elif MAX_SERVICES == 128
#define SERVICE_BITS 7
#elif MAX_SERVICES == 256
#define SERVICE_BITS 8
#elif MAX_SERVICES == 512
#define SERVICE_BITS 9
#elif MAX_SERVICES == 1024
#define SERVICE_BITS 10
#elif MAX_SERVICES == 2048
#define SERVICE_BITS 11
#elif MAX_SERVICES == 4096
#define SERVICE_BITS 12
#elif MAX_SERVICES == 8192
#define SERVICE_BITS 13
#elif MAX_SERVICES == 16384
#define SERVICE_BITS 14
#elif MAX_SERVICES == 32768
#define SERVICE_BITS 15
#elif MAX_SERVICES == 65536
#define SERVICE_BITS 16
#else
#error "MAX_SERVICES must be a power of two from 2 to 65536 on Tofino"
#endif
#if MAX_DEVICES <= 2
#define DEVICE_BITS 1
#elif MAX_DEVICES <= 4
#define DEVICE_BITS 2
#elif MAX_DEVICES <= 8
#define DEVICE_BITS 3
#elif MAX_DEVICES <= 16
#define DEVICE_BITS 4
#elif MAX_DEVICES <= 32
#define DEVICE_BITS 5
#elif MAX_DEVICES <= 64
#define DEVICE_BITS 6
#elif MAX_DEVICES <= 128
#define DEVICE_BITS 7
#elif MAX_DEVICES <= 256
#define DEVICE_BITS 8
#elif MAX_DEVICES <= 512
#define DEVICE_BITS 9
#elif MAX_DEVICES <= 1024
#define DEVICE_BITS 10
#elif MAX_DEVICES <= 2048
#define DEVICE_BITS 11
#elif MAX_DEVICES <= 4096
#define DEVICE_BITS 12
#elif MAX_DEVICES <= 8192
#define DEVICE_BITS 13
#elif MAX_DEVICES <= 16384
#define DEVICE_BITS 14
#elif MAX_DEVICES <= 32768
#define DEVICE_BITS 15
#elif MAX_DEVICES <= 65536
#define DEVICE_BITS 16
#else
#error "MAX_DEVICES must be at most 65536"
#endif
#define CELL_BITS (DEVICE_BITS + SERVICE_BITS)
#if (DIGEST_CACHE_SIZE & (DIGEST_CACHE_SIZE - 1)) != 0 || DIGEST_CACHE_SIZE > 65536
#error "DIGEST_CACHE_SIZE must be a power of two up to 65536 on Tofino"
#endif

// The cache's clock: the ingress MAC timestamp (ns) in units of 1024 ns, 32 bits wide (it wraps
// after about 73 minutes). DIGEST_REPEAT_US in those units, rounded up.
#define DIGEST_REPEAT_TICKS ((DIGEST_REPEAT_US * 1000 + 1023) / 1024)

const DigestType_t NEW_DEVICE_DIGEST = 1;

// What ingress tells egress about a packet: it travels in front of the frame from the ingress
// deparser to the egress parser and is never sent on the wire.
header bridge_t {
    bit<7>  pad0;
    PortId_t ingress_port;
    bit<7>  pad1;
    bit<1>  flooded;
}

// The cached MAC of one slot: its top 16 bits in `hi`, its low 32 in `lo`.
struct mac_pair_t {
    bit<32> hi;
    bit<32> lo;
}

struct metadata_t {
    bridge_t bridge;
    bit<16>  device_id;
    bit<1>   registered;
    bit<1>   has_service_key;
    bit<8>   l4_proto;
    bit<16>  l4_sport;
    bit<16>  l4_dport;
    bit<16>  service_id;
    bit<CELL_BITS> cell;
    bit<17>  ihl_bytes;
    bit<17>  header_room;
    bit<16>  digest_slot;
    bit<32>  mac_hi;
    bit<32>  mac_lo;
    bit<1>   mac_changed;
    bit<1>   announce;
    bit<32>  now;
    bit<48>  digest_mac;
    PortId_t digest_port;
}

struct egress_headers_t {
    bridge_t bridge;
}

struct egress_metadata_t {
}

// TNA parsers have no parser-error semantics like BMv2's `verify`: the ingress control checks
// the same conditions on the parsed fields (see IngressImpl.malformed_header).
#define SVCFP_ETHERNET_STATE parse_ethernet
#define SVCFP_VERIFY(condition, err)

parser IngressParserImpl(packet_in packet,
                         out headers_t hdr,
                         out metadata_t meta,
                         out ingress_intrinsic_metadata_t ig_intr_md) {
    state start {
        packet.extract(ig_intr_md);
        packet.advance(PORT_METADATA_SIZE);
        transition parse_ethernet;
    }

#include "svcfp_parser.p4"
}

control IngressImpl(inout headers_t hdr,
                    inout metadata_t meta,
                    in ingress_intrinsic_metadata_t ig_intr_md,
                    in ingress_intrinsic_metadata_from_parser_t ig_prsr_md,
                    inout ingress_intrinsic_metadata_for_deparser_t ig_dprsr_md,
                    inout ingress_intrinsic_metadata_for_tm_t ig_tm_md) {

    // Indexed device_id * MAX_SERVICES + service_id (as the concatenation), as in fingerprint.p4.
    // The compiler takes no @id on externs: the counter's, registers' and digest's ids are its
    // own, and the control plane resolves them by name. 32-bit cells pack two to a RAM word (the
    // driver keeps the full counts); 64-bit ones would halve the layout.
    Counter<bit<32>, bit<CELL_BITS>>(MAX_DEVICES * MAX_SERVICES, CounterType_t.PACKETS_AND_BYTES)
        service_hits;

    // New-device digest de-duplication cache (only the data plane reads and writes these): the
    // last unregistered MAC announced from each slot, and when (DIGEST_REPEAT_TICKS units).
    Register<mac_pair_t, bit<16>>(DIGEST_CACHE_SIZE) digest_mac;
    Register<bit<32>, bit<16>>(DIGEST_CACHE_SIZE) digest_time;

    Hash<bit<16>>(HashAlgorithm_t.CRC16) slot_hash;

    // Stores this MAC in its slot; says whether the slot held another one.
    RegisterAction<mac_pair_t, bit<16>, bit<1>>(digest_mac) swap_mac = {
        void apply(inout mac_pair_t value, out bit<1> changed) {
            if (value.hi != meta.mac_hi || value.lo != meta.mac_lo) {
                changed = 1;
            } else {
                changed = 0;
            }
            value.hi = meta.mac_hi;
            value.lo = meta.mac_lo;
        }
    };

    // Announce when the slot held another MAC or its last announcement is DIGEST_REPEAT_US old;
    // the slot's time is then now.
    RegisterAction<bit<32>, bit<16>, bit<1>>(digest_time) stamp_time = {
        void apply(inout bit<32> value, out bit<1> announce) {
            if (meta.mac_changed == 1 || meta.now - value >= DIGEST_REPEAT_TICKS) {
                value = meta.now;
                announce = 1;
            } else {
                announce = 0;
            }
        }
    };

    @id(0x01000001)
    action set_device(bit<16> device_id) {
        meta.device_id = device_id;
        meta.registered = 1;
    }

    @id(0x01000002)
    action unregistered() {
        meta.device_id = 0;
        meta.registered = 0;
    }

    @id(0x01000003)
    action set_service(bit<16> service_id) {
        meta.service_id = service_id;
    }

    @id(0x01000004)
    action forward(bit<9> port) {
        ig_tm_md.ucast_egress_port = port;
    }

    @id(0x01000005)
    action flood() {
        ig_tm_md.mcast_grp_a = FLOOD_GROUP;
        meta.bridge.flooded = 1;
    }

    @id(0x01000006)
    action drop() {
        ig_dprsr_md.drop_ctl = 1;
    }

    // total_len - IHL * 4 in 17 bits: the top bit is the borrow of total_len < IHL * 4. In an
    // action of its own so the gateway after it tests one bit, not the subtraction.
    @hidden
    action measure_ipv4_header() {
        meta.header_room = (bit<17>)hdr.ipv4.total_len - meta.ihl_bytes;
    }

    @hidden
    table measure_ipv4 {
        actions = { measure_ipv4_header; }
        default_action = measure_ipv4_header();
        size = 1;
    }

    @id(0x02000001)
    table device_table {
        key = {
            hdr.ethernet.src: exact @name("src_mac");
        }
        actions = {
            set_device;
            @defaultonly unregistered;
        }
        default_action = unregistered();
        size = MAX_DEVICES;
    }

    @id(0x02000002)
    table service_by_dst {
        key = {
            meta.l4_proto: ternary @name("proto");
            meta.l4_dport: range @name("port");
        }
        actions = {
            set_service;
            @defaultonly NoAction;
        }
        default_action = NoAction();
        size = 1024;
    }

    @id(0x02000003)
    table service_by_src {
        key = {
            meta.l4_proto: ternary @name("proto");
            meta.l4_sport: range @name("port");
        }
        actions = {
            set_service;
            @defaultonly NoAction;
        }
        default_action = NoAction();
        size = 1024;
    }

    @id(0x02000004)
    table l2_forward {
        key = {
            hdr.ethernet.dst: exact @name("dst_mac");
        }
        actions = {
            forward;
            flood;
            drop;
        }
        default_action = flood();
        size = 1024;
    }

    apply {
        meta.service_id = 0;
        meta.bridge.setValid();
        meta.bridge.pad0 = 0;
        meta.bridge.pad1 = 0;
        meta.bridge.ingress_port = ig_intr_md.ingress_port;
        meta.bridge.flooded = 0;

        // The service key from the parsed headers (fingerprint.p4's rules), computed beside the
        // device lookup; whether it is used depends on the checks below.
        meta.has_service_key = 0;
        meta.l4_proto = 0;
        meta.l4_sport = 0;
        meta.l4_dport = 0;
        if (hdr.ipv4.isValid()) {
            meta.l4_proto = hdr.ipv4.protocol;
        } else if (hdr.ipv6.isValid()) {
            meta.l4_proto = hdr.ipv6.next_hdr;
        }
        if (hdr.tcp.isValid()) {
            meta.l4_sport = hdr.tcp.src_port;
            meta.l4_dport = hdr.tcp.dst_port;
            meta.has_service_key = 1;
        } else if (hdr.udp.isValid()) {
            meta.l4_sport = hdr.udp.src_port;
            meta.l4_dport = hdr.udp.dst_port;
            meta.has_service_key = 1;
        } else if ((hdr.ipv4.isValid() && hdr.ipv4.protocol != PROTO_TCP
                    && hdr.ipv4.protocol != PROTO_UDP)
                   || (hdr.ipv6.isValid() && hdr.ipv6.next_hdr != PROTO_TCP
                       && hdr.ipv6.next_hdr != PROTO_UDP)) {
            meta.has_service_key = 1;
        }
        // IHL * 4 as a 17-bit number, a stage before it is subtracted (one operation an action).
        meta.ihl_bytes = 11w0 ++ hdr.ipv4.ihl ++ 2w0;

        device_table.apply();
        measure_ipv4.apply();

        // The conditions v1model's parser verifies (a parser error there) and any Tofino parser
        // error: a header that contradicts itself is never looked up as a service.
        if (meta.has_service_key == 1 && ig_prsr_md.parser_err == 0
                && !(hdr.ipv4.isValid()
                     && (hdr.ipv4.version != 4 || meta.header_room[16:16] == 1))
                && !(hdr.tcp.isValid() && hdr.tcp.data_offset < 5)) {
            if (!service_by_dst.apply().hit) {
                service_by_src.apply();
            }
        }

        // A device id beyond the counter's layout is treated as a miss (unregistered, announced);
        // a service id beyond it counts as "other": never another device's cells, never outside
        // the array.
        if (meta.device_id >= MAX_DEVICES) {
            meta.device_id = 0;
            meta.registered = 0;
        }
        if (meta.service_id >= MAX_SERVICES) {
            meta.cell = meta.device_id[DEVICE_BITS - 1:0] ++ (bit<SERVICE_BITS>)0;
        } else {
            meta.cell = meta.device_id[DEVICE_BITS - 1:0] ++ meta.service_id[SERVICE_BITS - 1:0];
        }
        service_hits.count(meta.cell);

        if (meta.registered == 0) {
            meta.digest_slot = slot_hash.get({ hdr.ethernet.src }) & (DIGEST_CACHE_SIZE - 1);
            meta.mac_hi = (bit<32>)hdr.ethernet.src[47:32];
            meta.mac_lo = hdr.ethernet.src[31:0];
            meta.now = ig_intr_md.ingress_mac_tstamp[41:10];
            meta.mac_changed = swap_mac.execute(meta.digest_slot);
            meta.announce = stamp_time.execute(meta.digest_slot);
            if (meta.announce == 1) {
                ig_dprsr_md.digest_type = NEW_DEVICE_DIGEST;
                meta.digest_mac = hdr.ethernet.src;
                meta.digest_port = ig_intr_md.ingress_port;
            }
        }

        l2_forward.apply();
    }
}

control IngressDeparserImpl(packet_out packet,
                            inout headers_t hdr,
                            in metadata_t meta,
                            in ingress_intrinsic_metadata_for_deparser_t ig_dprsr_md) {
    @name(".new_device_t")
    Digest<new_device_t>() new_device_digest;

    apply {
        if (ig_dprsr_md.digest_type == NEW_DEVICE_DIGEST) {
            new_device_digest.pack({ meta.digest_mac, meta.digest_port });
        }
        packet.emit(meta.bridge);
        packet.emit(hdr.ethernet);
        packet.emit(hdr.vlan);
        packet.emit(hdr.arp);
        packet.emit(hdr.ipv4);
        packet.emit(hdr.ipv4_options);
        packet.emit(hdr.ipv6);
        packet.emit(hdr.tcp);
        packet.emit(hdr.udp);
        packet.emit(hdr.icmp);
    }
}

// Egress sees only what ingress bridged; the frame itself passes through unparsed.
parser EgressParserImpl(packet_in packet,
                        out egress_headers_t hdr,
                        out egress_metadata_t meta,
                        out egress_intrinsic_metadata_t eg_intr_md) {
    state start {
        packet.extract(eg_intr_md);
        packet.extract(hdr.bridge);
        transition accept;
    }
}

control EgressImpl(inout egress_headers_t hdr,
                   inout egress_metadata_t meta,
                   in egress_intrinsic_metadata_t eg_intr_md,
                   in egress_intrinsic_metadata_from_parser_t eg_prsr_md,
                   inout egress_intrinsic_metadata_for_deparser_t eg_dprsr_md,
                   inout egress_intrinsic_metadata_for_output_port_t eg_oport_md) {
    apply {
        // The flood group holds every port; never send a flooded copy back where it came from.
        if (hdr.bridge.flooded == 1 && eg_intr_md.egress_port == hdr.bridge.ingress_port) {
            eg_dprsr_md.drop_ctl = 1;
        }
        hdr.bridge.setInvalid();
    }
}

control EgressDeparserImpl(packet_out packet,
                           inout egress_headers_t hdr,
                           in egress_metadata_t meta,
                           in egress_intrinsic_metadata_for_deparser_t eg_dprsr_md) {
    apply {
        packet.emit(hdr.bridge);
    }
}

Pipeline(IngressParserImpl(),
         IngressImpl(),
         IngressDeparserImpl(),
         EgressParserImpl(),
         EgressImpl(),
         EgressDeparserImpl()) pipe;

SVCFP_CONTRACT
Switch(pipe) main;
