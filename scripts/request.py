#!/usr/bin/env python3
"""Sends one request of the clawdforge contract over NATS and prints the reply.

Usage: request.py SUBJECT [JSON] [--token TOKEN] [--url NATS_URL] [--timeout SECS] [--stream]

--stream asks for a streamed reply (Forge-Stream: 1: forge.session.turn, forge.run;
forge.session.events always streams): each message is printed as it comes, with its Forge-Event type, up to the
empty message that ends the stream.

TOKEN defaults to $CLAWDFORGE_TOKEN, the URL to $NATS_URL or nats://127.0.0.1:4222.
Exits 1 when the reply is an error (its status and body are printed).
Needs nats-py: run it with .tools/bin/python (scripts/setup-tools.sh installs it).
"""
import argparse
import asyncio
import json
import os
import sys

import nats


async def main():
    p = argparse.ArgumentParser(description="One clawdforge request over NATS.")
    p.add_argument("subject")
    p.add_argument("body", nargs="?", default="{}")
    p.add_argument("--token", default=os.environ.get("CLAWDFORGE_TOKEN"))
    p.add_argument("--url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument("--timeout", type=float, default=180)
    p.add_argument("--stream", action="store_true")
    args = p.parse_args()
    nc = await nats.connect(args.url)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        if args.stream or args.subject == "forge.session.events":
            msg = await streamed(nc, args, {**headers, "Forge-Stream": "1"})
        else:
            msg = await nc.request(args.subject, args.body.encode(), timeout=args.timeout, headers=headers)
    finally:
        await nc.close()
    show(msg)


async def streamed(nc, args, headers):
    """Prints each event as it comes; returns the final message."""
    sub = await nc.subscribe(nc.new_inbox())
    await nc.publish(args.subject, args.body.encode(), reply=sub.subject, headers=headers)
    last = None
    while True:
        msg = await sub.next_msg(timeout=args.timeout)
        if not msg.data and not msg.headers:
            return last
        kind = (msg.headers or {}).get("Forge-Event")
        if kind in ("turn", "run", "error"):
            last = msg
        else:
            print(f"[{kind}] {msg.data.decode(errors='replace')}", flush=True)


def show(msg):
    status = (msg.headers or {}).get("Nats-Service-Error-Code")
    try:
        print(json.dumps(json.loads(msg.data), indent=2))
    except ValueError:
        print(msg.data.decode(errors="replace"))
    if status:
        print(f"error status {status}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
