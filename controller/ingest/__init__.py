"""Offline ingestion: flow records (IPFIX CSV, binary IPFIX, NetFlow v9) and packet captures
(pcap, pcapng) turned into per-unit activity, attributed as the switch attributes packets."""
