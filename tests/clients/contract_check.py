#!/usr/bin/env python3
"""An outside client of the wire contract, written with nats-py from subjects.md alone.

Usage: contract_check.py NATS_URL ADMIN_TOKEN

Mints an app token, creates a session, runs two turns, checks their outputs, runs a streamed
turn (Forge-Stream: 1) and checks its events, closes the session, checks a couple of error
replies, and finds the workers with $SRV.PING. Prints one
line per step and exits non-zero on the first surprise.
"""
import asyncio
import json
import sys

import nats
from nats.errors import TimeoutError as NatsTimeout


class ForgeError(Exception):
    def __init__(self, status, body):
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


async def request(nc, subject, body, token=None, timeout=60):
    headers = {"Authorization": f"Bearer {token}"} if token else None
    msg = await nc.request(subject, json.dumps(body).encode(), timeout=timeout, headers=headers)
    status = (msg.headers or {}).get("Nats-Service-Error-Code")
    reply = json.loads(msg.data) if msg.data else None
    if status:
        raise ForgeError(int(status), reply)
    return reply


async def stream(nc, subject, body, token, stall=30):
    """A streamed request: the (Forge-Event, body) pairs up to the empty message that ends it."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    headers = {"Authorization": f"Bearer {token}", "Forge-Stream": "1"}
    await nc.publish(subject, json.dumps(body).encode(), reply=inbox, headers=headers)
    frames = []
    try:
        while True:
            msg = await sub.next_msg(timeout=stall)
            if not msg.data and not msg.headers:
                return frames
            kind = (msg.headers or {}).get("Forge-Event")
            frames.append((kind, json.loads(msg.data)))
    finally:
        await sub.unsubscribe()


def check(cond, what):
    if not cond:
        print(f"FAIL {what}")
        sys.exit(1)
    print(f"ok   {what}")


async def main(url, admin_token):
    nc = await nats.connect(url)
    try:
        health = await request(nc, "forge.health", {})
        check(health["ok"] is True and "worker_id" in health, "forge.health answers without a token")

        minted = await request(nc, "forge.admin.token.create", {"app": "py-client"}, admin_token)
        token = minted["token"]
        check(minted["app"] == "py-client" and minted["admin"] is False, "minted an app token")

        session = await request(nc, "forge.session.create", {}, token, timeout=90)
        sid = session["session_id"]
        check(session["status"] == "open" and session["turns"] == 0, f"created session {sid}")

        outputs = []
        for i, prompt in enumerate(["first question", "second question"], start=1):
            turn = await request(
                nc, "forge.session.turn", {"session_id": sid, "prompt": prompt}, token, timeout=150
            )
            check(turn["turn"] == i and prompt in turn["output"], f"turn {i}: {turn['output']!r}")
            outputs.append(turn["output"])

        frames = await stream(nc, "forge.session.turn", {"session_id": sid, "prompt": "live"}, token)
        kinds = [k for k, _ in frames if k != "heartbeat"]
        check(kinds[-1] == "turn" and kinds.count("turn") == 1, f"streamed turn: {kinds}")
        events = [b for k, b in frames if k not in ("turn", "heartbeat")]
        check([e["seq"] for e in events] == list(range(1, len(events) + 1)), "events numbered from 1")
        said = "".join(e["text"] for e in events if e["type"] == "message")
        check(said == frames[-1][1]["output"] == "echo: live", "the output is the message events")

        got = await request(nc, "forge.session.get", {"session_id": sid}, token)
        check(got["turns"] == 3, "get shows three turns")

        closed = await request(nc, "forge.session.close", {"session_id": sid}, token)
        check(closed == {"session_id": sid, "closed": True, "already_closed": False}, "closed")
        again = await request(nc, "forge.session.close", {"session_id": sid}, token)
        check(again["already_closed"] is True, "closing again is idempotent")

        try:
            await request(nc, "forge.session.turn", {"session_id": sid, "prompt": "late"}, token)
            check(False, "a turn on a closed session is refused")
        except ForgeError as e:
            check(e.status == 409 and e.body["error"]["code"] == "conflict", "closed session: 409 conflict")
        try:
            await request(nc, "forge.session.list", {}, None)
            check(False, "no token is refused")
        except ForgeError as e:
            check(e.status == 401 and e.body["error"]["code"] == "unauthorized", "no token: 401 unauthorized")

        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish("$SRV.PING.clawdforge", b"", reply=inbox)
        workers = []
        try:
            while True:
                msg = await sub.next_msg(timeout=0.5)
                workers.append(json.loads(msg.data)["id"])
        except NatsTimeout:
            pass
        check(len(workers) >= 1, f"$SRV.PING found {len(workers)} worker(s)")
    finally:
        await nc.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    asyncio.run(main(sys.argv[1], sys.argv[2]))
