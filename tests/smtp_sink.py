"""A real SMTP server on loopback standing in for the outbound relay.

It keeps what it receives and can be told to answer 4xx or 5xx, to RCPT
(per recipient) or to DATA, to hold DATA until told, or to be down altogether.
With `smtputf8` it offers SMTPUTF8 (RFC 6531) in its EHLO, as aiosmtpd does when asked.
"""
from __future__ import annotations

import asyncio
import email
import threading
import time
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from ports import free_port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    helo: str = ""  # the name the client gave in EHLO/HELO
    at: float = 0.0  # time.time() when the sink answered 250 to DATA
    mail_options: tuple[str, ...] = ()  # the MAIL FROM parameters (SMTPUTF8, BODY=8BITMIME)

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


class _Handler:
    def __init__(self, sink: SmtpSink):
        self.sink = sink

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if self.sink.mail_answer.startswith("250"):
            envelope.mail_from = address
            envelope.mail_options.extend(options)
        return self.sink.mail_answer

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        answer = self.sink.rcpt_answers.get(address.lower(), self.sink.rcpt_answer)
        if answer.startswith("250"):
            envelope.rcpt_tos.append(address)
        return answer

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.sink.attempts += 1
        if self.sink.data_gate is not None:  # a slow relay: it answers once the test opens the gate
            await asyncio.get_running_loop().run_in_executor(None, self.sink.data_gate.wait, 60)
        if not self.sink.data_answer.startswith("250"):
            return self.sink.data_answer
        with self.sink.lock:
            self.sink.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content,
                                               session.host_name or "", time.time(), tuple(envelope.mail_options)))
        return "250 OK queued"


class SmtpSink:
    def __init__(self, port: int | None = None, smtputf8: bool = False, size_limit: int = 50 * 1024 * 1024):
        if port is None:
            port = free_port()  # aiosmtpd cannot be given port 0
        self.port = port
        self.smtputf8 = smtputf8
        self.size_limit = size_limit  # announced as SIZE in its EHLO; larger mail is refused with 552
        self.received: list[Received] = []
        self.attempts = 0
        self.lock = threading.Lock()
        self.mail_answer = "250 OK"
        self.rcpt_answer = "250 OK"
        self.rcpt_answers: dict[str, str] = {}
        self.data_answer = "250 OK"
        self.data_gate: threading.Event | None = None
        self._controller: Controller | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> SmtpSink:
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port,
                                      data_size_limit=self.size_limit, enable_SMTPUTF8=self.smtputf8)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def accept(self) -> None:
        self.mail_answer = self.rcpt_answer = self.data_answer = "250 OK"
        self.rcpt_answers.clear()

    def to(self, address: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if address in r.rcpt_tos]

    def wait_for(self, count: int, timeout: float = 30.0, to: str | None = None) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.to(to) if to else list(self.received)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"sink got {len(self.to(to) if to else self.received)} message(s), "
                             f"expected {count}{' to ' + to if to else ''}")
