/*
 * svcfp data plane (P4_16, v1model): maps every packet to (device, service) and counts it.
 * The constants, header types and parse graph it shares with fingerprint_tna.p4 are
 * svcfp_headers.p4 and svcfp_parser.p4; the v1model metadata, controls and package are here.
 *
 * The contract this program implements — names, IDs, semantics — is p4src/README.md; the
 * reference switch (refswitch/) implements the same contract and the PTF suite checks both.
 */

#include <core.p4>
#include <v1model.p4>

#include "svcfp_headers.p4"

// Headers whose fields contradict themselves: parsing stops there with one of these errors, the
// packet still goes through ingress (v1model does not drop on a parser error) and is forwarded,
// but it is never looked up as a service.
error {
    Ipv4BadVersion,
    Ipv4BadTotalLength,
    TcpBadDataOffset
}

struct metadata_t {
    bit<16> device_id;
    bit<1>  registered;
    bit<1>  has_service_key;
    bit<8>  l4_proto;
    bit<16> l4_sport;
    bit<16> l4_dport;
    bit<16> service_id;
    bit<1>  flooded;
    bit<32> digest_slot;
    bit<48> cached_mac;
    bit<48> cached_time;
}

// The shared parse graph starts at `start`; a header that contradicts itself is a parser error.
#define SVCFP_ETHERNET_STATE start
#define SVCFP_VERIFY(condition, err) verify(condition, err)

parser ParserImpl(packet_in packet,
                  out headers_t hdr,
                  inout metadata_t meta,
                  inout standard_metadata_t standard_metadata) {
#include "svcfp_parser.p4"
}

// Headers are forwarded unchanged, so there is nothing to verify or recompute.
control VerifyChecksumImpl(inout headers_t hdr, inout metadata_t meta) {
    apply { }
}

control IngressImpl(inout headers_t hdr,
                    inout metadata_t meta,
                    inout standard_metadata_t standard_metadata) {

    // Indexed device_id * MAX_SERVICES + service_id. A counter rather than a register because
    // P4Runtime servers read a whole counter array in one wildcard read; counters are never reset,
    // the controller works with deltas.
    @id(0x12000001)
    counter(MAX_DEVICES * MAX_SERVICES, CounterType.packets_and_bytes) service_hits;

    // New-device digest de-duplication cache: the last unregistered MAC announced from each slot
    // and when. Only the data plane reads and writes these.
    @id(0x16000001)
    register<bit<48>>(DIGEST_CACHE_SIZE) digest_mac;
    @id(0x16000002)
    register<bit<48>>(DIGEST_CACHE_SIZE) digest_time;

    // The per-packet defaults and the service key, in one step. The key is used only for a
    // packet parsed without error: a TCP or UDP packet whose header is missing (later fragment),
    // truncated or contradicts itself is never looked up, so it can never be mistaken for a
    // port-0 service; ICMP, ICMPv6 and any other IP protocol are looked up with ports 0.
    // Both device_table actions run it first: device_table is applied to every packet before
    // anything else, so this saves BMv2 a pipeline node. Hidden: not a P4Runtime action.
    @hidden
    action start_packet() {
        meta.service_id = 0;
        meta.flooded = 0;
        // At most one of each pair is valid: an OR of flat choices, which p4c keeps as one
        // expression (a nested choice becomes several assignments).
        meta.l4_proto = (hdr.ipv4.isValid() ? hdr.ipv4.protocol : 8w0)
                      | (hdr.ipv6.isValid() ? hdr.ipv6.next_hdr : 8w0);
        meta.l4_sport = (hdr.tcp.isValid() ? hdr.tcp.src_port : 16w0)
                      | (hdr.udp.isValid() ? hdr.udp.src_port : 16w0);
        meta.l4_dport = (hdr.tcp.isValid() ? hdr.tcp.dst_port : 16w0)
                      | (hdr.udp.isValid() ? hdr.udp.dst_port : 16w0);
        meta.has_service_key = standard_metadata.parser_error == error.NoError
                && (hdr.tcp.isValid() || hdr.udp.isValid()
                    || ((hdr.ipv4.isValid() || hdr.ipv6.isValid())
                        && meta.l4_proto != PROTO_TCP && meta.l4_proto != PROTO_UDP))
                ? 1w1 : 1w0;
    }

    // A device id beyond the counter's layout (an entry a controller must never write, but BMv2
    // accepts any 16-bit value) is treated as a miss: unregistered, and announced. The guards
    // are expressions inside the actions: on BMv2 every `if` in a control body is one more
    // pipeline node each packet walks through.
    @id(0x01000001)
    action set_device(bit<16> device_id) {
        start_packet();
        meta.registered = device_id < MAX_DEVICES ? 1w1 : 1w0;
        meta.device_id = device_id < MAX_DEVICES ? device_id : 16w0;
    }

    @id(0x01000002)
    action unregistered() {
        start_packet();
        meta.device_id = 0;
        meta.registered = 0;
    }

    // Likewise a service id beyond the layout counts as "other": never in another device's
    // cells, never outside the array.
    @id(0x01000003)
    action set_service(bit<16> service_id) {
        meta.service_id = service_id < MAX_SERVICES ? service_id : 16w0;
    }

    // The count, once the device and the service are known. Every l2_forward action runs it
    // first: l2_forward is applied last to every packet and runs exactly one of them, which saves
    // BMv2 a pipeline node of its own for the count. Hidden: not a P4Runtime action.
    @hidden
    action count_packet() {
        service_hits.count((bit<32>)meta.device_id * MAX_SERVICES + (bit<32>)meta.service_id);
    }

    @id(0x01000004)
    action forward(bit<9> port) {
        count_packet();
        standard_metadata.egress_spec = port;
    }

    @id(0x01000005)
    action flood() {
        count_packet();
        standard_metadata.mcast_grp = FLOOD_GROUP;
        meta.flooded = 1;
    }

    @id(0x01000006)
    action drop() {
        count_packet();
        mark_to_drop(standard_metadata);
    }

    // Source MAC -> device id. A miss is an unregistered device: it is counted under device 0
    // and announced to the controller.
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

    // (protocol, destination port) -> service id: the service a device uses as a client.
    // Ternary protocol and range port let one entry cover a port range or a whole protocol.
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

    // (protocol, source port) -> service id, consulted only when service_by_dst misses: the
    // service a device offers as a server, seen in its responses.
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

    // Destination MAC -> egress port. Unknown and broadcast destinations flood; a default of
    // drop() turns the switch into a tap that counts and forwards nothing.
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
        // Its actions start the packet (start_packet) before they set the device.
        device_table.apply();

        if (meta.registered == 0) {
            hash(meta.digest_slot, HashAlgorithm.crc16, (bit<32>)0, { hdr.ethernet.src },
                 (bit<32>)DIGEST_CACHE_SIZE);
            digest_mac.read(meta.cached_mac, meta.digest_slot);
            digest_time.read(meta.cached_time, meta.digest_slot);
            if (meta.cached_mac != hdr.ethernet.src
                    || standard_metadata.ingress_global_timestamp - meta.cached_time
                       >= DIGEST_REPEAT_US) {
                digest<new_device_t>(1, { hdr.ethernet.src, standard_metadata.ingress_port });
                digest_mac.write(meta.digest_slot, hdr.ethernet.src);
                digest_time.write(meta.digest_slot, standard_metadata.ingress_global_timestamp);
            }
        }

        if (meta.has_service_key == 1) {
            if (!service_by_dst.apply().hit) {
                service_by_src.apply();
            }
        }

        // Its actions count the packet (count_packet) before they forward it.
        l2_forward.apply();
    }
}

control EgressImpl(inout headers_t hdr,
                   inout metadata_t meta,
                   inout standard_metadata_t standard_metadata) {
    apply {
        // The flood group holds every port; never send a flooded copy back where it came from.
        if (meta.flooded == 1
                && standard_metadata.egress_port == standard_metadata.ingress_port) {
            mark_to_drop(standard_metadata);
        }
    }
}

control ComputeChecksumImpl(inout headers_t hdr, inout metadata_t meta) {
    apply { }
}

control DeparserImpl(packet_out packet, in headers_t hdr) {
    apply {
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

SVCFP_CONTRACT
V1Switch(ParserImpl(),
         VerifyChecksumImpl(),
         IngressImpl(),
         EgressImpl(),
         ComputeChecksumImpl(),
         DeparserImpl()) main;
