"""A real DNS server for tests: answers UDP queries on 127.0.0.1 from a zone the
test edits (dnspython builds and parses the wire messages)."""

import socket
import threading
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


@dataclass
class DnsServer:
    """`records[(name, type)]` → values in zone-file text: CNAME "x.example.",
    MX "10 mx.example.", TXT '"v=spf1 …"'. A name with no record at all is NXDOMAIN."""

    host: str = "127.0.0.1"
    port: int = 0
    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    queries: int = 0
    _socket: socket.socket | None = None
    _thread: threading.Thread | None = None

    def start(self) -> "DnsServer":
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((self.host, 0))
        self.port = self._socket.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def publish(self, name: str, rdtype: str, *values: str) -> None:
        self.records[(name.rstrip(".").lower(), rdtype.upper())] = list(values)

    def clear(self) -> None:
        self.records.clear()

    def _serve(self) -> None:
        while self._socket is not None:
            try:
                wire, client = self._socket.recvfrom(4096)
            except OSError:  # closed by stop()
                return
            self.queries += 1
            query = dns.message.from_wire(wire)
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            question = query.question[0]
            name = question.name.to_text().rstrip(".").lower()
            rdtype = dns.rdatatype.to_text(question.rdtype)
            if not any(known == name for known, _ in self.records):
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif values := self.records.get((name, rdtype)):
                response.answer.append(dns.rrset.from_text_list(question.name, 300, "IN", rdtype, values))
            try:
                self._socket.sendto(response.to_wire(), client)
            except (OSError, AttributeError):
                return
