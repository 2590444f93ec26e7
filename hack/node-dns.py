"""The real node's resolver: answers the pods' queries for the `kubernetes` Service's names with
its address and NXDOMAIN for every other name, on the pod bridge's address only. Pods need a
resolver because kopf connects to https://kubernetes.default.svc; the host's resolver is off the
machine, so nothing is forwarded anywhere. Standard library only (RFC 1035 messages over UDP).

Usage: python3 hack/node-dns.py LISTEN_ADDRESS SERVICE_ADDRESS
"""

from __future__ import annotations

import socket
import struct
import sys

NAMES = {
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
}
TYPE_A = 1
NXDOMAIN = 3


def question(packet: bytes) -> tuple[str, int, int]:
    """The first question's name, type, and the offset where the question ends."""
    labels, at = [], 12
    while packet[at]:
        length = packet[at]
        labels.append(packet[at + 1 : at + 1 + length].decode("ascii", "replace").lower())
        at += 1 + length
    qtype = struct.unpack("!H", packet[at + 1 : at + 3])[0]
    return ".".join(labels), qtype, at + 5


def answer(packet: bytes, service: bytes) -> bytes:
    ident = packet[:2]
    name, qtype, end = question(packet)
    known = name in NAMES
    records = b""
    if known and qtype == TYPE_A:
        records = b"\xc0\x0c" + struct.pack("!HHIH", TYPE_A, 1, 30, 4) + service
    flags = 0x8180 if known else 0x8180 | NXDOMAIN  # response, recursion desired and available
    header = ident + struct.pack("!HHHHH", flags, 1, 1 if records else 0, 0, 0)
    return header + packet[12:end] + records


def main(listen: str, service: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((listen, 53))
    address = socket.inet_aton(service)
    while True:
        packet, peer = sock.recvfrom(512)
        try:
            sock.sendto(answer(packet, address), peer)
        except (IndexError, struct.error):  # a malformed query gets no answer
            continue


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
