"""A real SMTP server for tests: it speaks enough SMTP (EHLO/HELO, AUTH PLAIN, MAIL, RCPT, DATA,
RSET, NOOP, QUIT) for smtplib and keeps every message it is sent, parsed, as a person's
mail client would show it. Runs in a thread of the test process, on a free local port."""

from __future__ import annotations

import base64
import email
import email.policy
import socketserver
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage


@dataclass
class Received:
    """One message as the server got it."""

    mail_from: str
    rcpt_to: list[str]
    message: EmailMessage
    login: tuple[str, str] | None = None

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        return self.message.get_content()


@dataclass
class SmtpSink:
    """The running server: its port, and what it has received so far."""

    host: str
    port: int
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def messages(self) -> list[Received]:
        with self.lock:
            return list(self.received)


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def _reply(self, line: str) -> None:
        self.wfile.write(line.encode("ascii") + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        self._reply("220 recjobs-test-sink ESMTP")
        mail_from, rcpt, login = "", [], None
        while True:
            raw = self.rfile.readline(65536)
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line.split(" ", 1)[0].upper()
            if verb == "EHLO":
                self._reply("250-recjobs-test-sink")
                self._reply("250-AUTH PLAIN")
                self._reply("250 8BITMIME")
            elif verb == "HELO":
                self._reply("250 recjobs-test-sink")
            elif verb == "AUTH":
                parts = line.split()
                token = parts[2] if len(parts) > 2 else ""
                if not token:
                    self._reply("334 ")
                    token = self.rfile.readline(65536).decode("ascii").strip()
                _, user, password = base64.b64decode(token).decode("utf-8").split("\0")
                login = (user, password)
                self._reply("235 2.7.0 Authentication successful")
            elif verb == "MAIL":
                mail_from, rcpt = line.split(":", 1)[1].strip().strip("<>"), []
                self._reply("250 OK")
            elif verb == "RCPT":
                rcpt.append(line.split(":", 1)[1].strip().strip("<>"))
                self._reply("250 OK")
            elif verb == "DATA":
                self._reply("354 End data with <CR><LF>.<CR><LF>")
                lines = []
                while True:
                    data = self.rfile.readline(1 << 20)
                    if data in (b".\r\n", b".\n", b""):
                        break
                    data = data[1:] if data.startswith(b"..") else data  # undo dot-stuffing
                    lines.append(data.replace(b"\r\n", b"\n"))  # wire line ends, as a mail client reads them
                message = email.message_from_bytes(b"".join(lines), policy=email.policy.default)
                with self.server.sink.lock:
                    self.server.sink.received.append(Received(mail_from, rcpt, message, login))
                self._reply("250 OK: queued")
            elif verb in ("RSET", "NOOP"):
                self._reply("250 OK")
            elif verb == "QUIT":
                self._reply("221 Bye")
                return
            else:
                self._reply("502 Command not implemented")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    sink: SmtpSink


def start_sink() -> tuple[SmtpSink, _Server]:
    """Start a sink on 127.0.0.1 (a free port); stop it with ``server.shutdown(); server.server_close()``."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.sink = SmtpSink("127.0.0.1", server.server_address[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.sink, server
