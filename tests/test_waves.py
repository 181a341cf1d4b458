"""A wave's SMTP round trips overlap across its connections.

Each step (envelope, message, final ".") goes out on every connection of a wave
before any answer is read. These relays hold each answer until every connection
of the wave has reached that step: a sender that waited for one connection's
answer before writing to the next would never get it (the hold gives up after
HOLD_SECONDS and refuses, and the test fails).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from app.sending import send_batch
from app.services import Services
from tests.support import FakeClock, SmtpSink, active_subscriber, claim, free_port

#: How long a held answer waits for the rest of the wave before refusing.
HOLD_SECONDS = 10.0


class WaveSink(SmtpSink):
    """Holds its answer at `stage` ("mail" or "data") until `width` connections reached it."""

    def __init__(self, stage: str, width: int) -> None:
        super().__init__()
        self.stage = stage
        self.width = width
        self.arrived = 0
        self.gave_up = 0
        self.count_lock = threading.Lock()

    async def _hold(self) -> bool:
        """Wait for the wave's other connections; False if they never came."""
        with self.count_lock:
            self.arrived += 1
            target = -(-self.arrived // self.width) * self.width  # this wave's last arrival
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HOLD_SECONDS
        while self.arrived < target:
            if loop.time() > deadline:
                with self.count_lock:
                    self.gave_up += 1
                return False
            await asyncio.sleep(0.005)
        return True

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.stage == "mail" and not await self._hold():
            return "451 4.3.0 the other envelopes never came"
        return await super().handle_MAIL(server, session, envelope, address, options)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.stage == "data" and not await self._hold():
            return "451 4.3.0 the other final dots never came"
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def wave_sink(request: pytest.FixtureRequest, services: Services) -> Iterator[WaveSink]:
    sink = WaveSink(request.param, services.settings.send_connections)
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    sink.port = controller.port  # type: ignore[attr-defined]
    try:
        yield sink
    finally:
        controller.stop()


@pytest.mark.parametrize("wave_sink", ["mail", "data"], indirect=True)
def test_each_step_goes_out_on_every_connection_before_an_answer_is_read(
    services: Services, wave_sink: WaveSink, clock: FakeClock
) -> None:
    assert services.settings.send_connections == 4
    port = wave_sink.port  # type: ignore[attr-defined]
    relay = Services(
        services.settings.with_changes(smtp_url=f"smtp://127.0.0.1:{port}"), clock=clock
    )
    ids = [active_subscriber(services, f"r{n}@example.com", clock.now) for n in range(8)]
    claim(services, ids, clock.now)
    try:
        assert send_batch(relay, ids).as_dict() == {"sent": 8}
    finally:
        relay.close()
    assert wave_sink.gave_up == 0
    assert wave_sink.connections == 4
    assert sorted(m.envelope_to[0] for m in wave_sink.messages) == [
        f"r{n}@example.com" for n in range(8)
    ]


def test_a_relay_without_pipelining_gets_one_command_at_a_time(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    smtp.pipelining = False
    ids = [active_subscriber(services, f"r{n}@example.com", clock.now) for n in range(6)]
    claim(services, ids, clock.now)
    assert send_batch(services, ids).as_dict() == {"sent": 6}
    assert len(smtp.messages) == 6


def test_a_refused_sender_mid_wave_leaves_the_envelopes_after_it_unsent(
    services: Services, smtp: SmtpSink, clock: FakeClock
) -> None:
    ids = [active_subscriber(services, f"r{n}@example.com", clock.now) for n in range(4)]
    smtp.answers["mail"] = "550 5.7.1 Sender not allowed"
    claim(services, ids, clock.now)
    report = send_batch(services, ids).as_dict()
    # Our sender is refused: the first email waits without counting against anyone,
    # and the batch stops; the three envelopes already sent are dropped unsent.
    assert report == {"deferred": 1, "waiting": 3}
    assert smtp.messages == []
