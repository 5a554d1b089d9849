"""HTTP load for `bench score`, meant to run in its own process (light imports: no torch).

Clients in the server's process would share its GIL and skew the very overhead being measured.
Times are `time.monotonic()` (CLOCK_MONOTONIC on Linux), comparable across processes on one machine.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx

Record = tuple[float, float, int, str, float]
"""(sent, answered, HTTP status or 0, adapter_version, server model_ms)."""


def drive(url: str, payloads: list[dict[str, Any]], clients: int, seconds: float) -> list[Record]:
    """`clients` threads post `/v1/score` back to back for `seconds`; returns one record per request."""
    records: list[Record] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(k: int) -> None:
        transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        with httpx.Client(base_url=url, timeout=120, transport=transport) as http:
            i = k
            while time.monotonic() < deadline:
                payload = payloads[i % len(payloads)]
                i += 1
                t0 = time.monotonic()
                status, version, model_ms = 0, "", 0.0
                try:
                    r = http.post("/v1/score", json=payload)
                    status = r.status_code
                    if status == 200:
                        body = r.json()
                        version, model_ms = body["adapter_version"], float(body["timing"]["model_ms"])
                except httpx.HTTPError:
                    pass
                with lock:
                    records.append((t0, time.monotonic(), status, version, model_ms))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records
