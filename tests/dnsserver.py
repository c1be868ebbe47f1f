"""A tiny authoritative DNS responder on loopback UDP, for SPF checks against real DNS traffic."""

from __future__ import annotations

import asyncio
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class TinyDNS(asyncio.DatagramProtocol):
    """Answers TXT queries from `records` (name -> strings); unknown names get NXDOMAIN."""

    def __init__(self, records: dict[str, list[str]]) -> None:
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}
        self.queries: list[str] = []
        self.transport: Any = None
        self.address = ""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        host, port = transport.get_extra_info("sockname")[:2]
        self.address = f"{host}:{port}"

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        self.queries.append(name)
        if name not in self.records:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.TXT:
            rrset = dns.rrset.RRset(question.name, dns.rdataclass.IN, dns.rdatatype.TXT)
            for text in self.records[name]:
                chunks = " ".join(f'"{text[i:i + 255]}"' for i in range(0, max(len(text), 1), 255))
                rrset.add(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, chunks), ttl=60)
            response.answer.append(rrset)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


async def start_dns(records: dict[str, list[str]]) -> TinyDNS:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(lambda: TinyDNS(records), local_addr=("127.0.0.1", 0))
    return protocol
