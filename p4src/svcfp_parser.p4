/*
 * svcfp data plane: the parse graph every architecture shares, as parser states to include
 * inside a parser whose `packet` is a packet_in and whose `hdr` is a headers_t
 * (svcfp_headers.p4). The including program defines, before the #include:
 *
 *   SVCFP_ETHERNET_STATE  the name of the first state here (v1model: start; TNA: a state after
 *                         the intrinsic metadata)
 *   SVCFP_VERIFY(c, e)    what a header that contradicts itself does (v1model: verify(c, e),
 *                         a parser error; TNA has no parser-error semantics, so its ingress
 *                         checks the same conditions on the parsed fields)
 *
 * The contract (p4src/README.md, "Parsing") is the same on every architecture.
 */

#ifndef SVCFP_ETHERNET_STATE
#error "define SVCFP_ETHERNET_STATE before including svcfp_parser.p4"
#endif
#ifndef SVCFP_VERIFY
#error "define SVCFP_VERIFY(condition, error) before including svcfp_parser.p4"
#endif

    state SVCFP_ETHERNET_STATE {
        packet.extract(hdr.ethernet);
        transition select(hdr.ethernet.ether_type) {
            ETHERTYPE_VLAN: parse_vlan;
            ETHERTYPE_ARP:  parse_arp;
            ETHERTYPE_IPV4: parse_ipv4;
            ETHERTYPE_IPV6: parse_ipv6;
            default:        accept;
        }
    }

    // At most one tag: a second 0x8100 is left unparsed.
    state parse_vlan {
        packet.extract(hdr.vlan);
        transition select(hdr.vlan.ether_type) {
            ETHERTYPE_ARP:  parse_arp;
            ETHERTYPE_IPV4: parse_ipv4;
            ETHERTYPE_IPV6: parse_ipv6;
            default:        accept;
        }
    }

    state parse_arp {
        packet.extract(hdr.arp);
        transition accept;
    }

    // IHL below 5 cannot describe a valid header: stop there rather than guess where L4 starts.
    state parse_ipv4 {
        packet.extract(hdr.ipv4);
        SVCFP_VERIFY(hdr.ipv4.version == 4, error.Ipv4BadVersion);
        SVCFP_VERIFY(hdr.ipv4.total_len >= (bit<16>)hdr.ipv4.ihl * 4, error.Ipv4BadTotalLength);
        transition select(hdr.ipv4.ihl) {
            0:       accept;
            1:       accept;
            2:       accept;
            3:       accept;
            4:       accept;
            5:       parse_ipv4_l4;
            default: parse_ipv4_options;
        }
    }

    state parse_ipv4_options {
        packet.extract(hdr.ipv4_options, (bit<32>)(((bit<16>)hdr.ipv4.ihl - 5) * 32));
        transition parse_ipv4_l4;
    }

    // Only the first fragment carries the L4 header.
    state parse_ipv4_l4 {
        transition select(hdr.ipv4.frag_offset, hdr.ipv4.protocol) {
            (0, PROTO_TCP):  parse_tcp;
            (0, PROTO_UDP):  parse_udp;
            (0, PROTO_ICMP): parse_icmp;
            default:         accept;
        }
    }

    state parse_ipv6 {
        packet.extract(hdr.ipv6);
        transition select(hdr.ipv6.next_hdr) {
            PROTO_TCP:    parse_tcp;
            PROTO_UDP:    parse_udp;
            PROTO_ICMPV6: parse_icmp;
            default:      accept;
        }
    }

    state parse_tcp {
        packet.extract(hdr.tcp);
        SVCFP_VERIFY(hdr.tcp.data_offset >= 5, error.TcpBadDataOffset);
        transition accept;
    }

    state parse_udp {
        packet.extract(hdr.udp);
        transition accept;
    }

    state parse_icmp {
        packet.extract(hdr.icmp);
        transition accept;
    }
