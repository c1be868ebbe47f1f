"""A small in-memory SQS (JSON protocol) for the demo and the events benchmark: the real consumer,
aioboto3 included, reads from it over HTTP with nothing else installed.

Supports what the consumer uses: ReceiveMessage (long polling, visibility timeout), DeleteMessage
(Batch), ChangeMessageVisibilityBatch, GetQueueAttributes, SendMessage, plus CreateQueue/GetQueueUrl.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sender.demo.standalone import serve_until_interrupted
from sender.listening import Listener


@dataclass
class _Message:
    id: str
    body: str
    sent_ms: int
    visible_at: float = 0.0
    receipt: str = ""
    receives: int = 0


class FakeQueue:
    def __init__(self, name: str, visibility: float = 30.0) -> None:
        self.name = name
        self.visibility = visibility
        self.ready: deque[_Message] = deque()
        self.hidden: dict[str, _Message] = {}  # receipt -> message
        self.arrived = asyncio.Event()
        self.deleted = 0

    def send(self, body: str) -> str:
        msg = _Message(str(uuid.uuid4()), body, int(time.time() * 1000))
        self.ready.append(msg)
        self.arrived.set()
        return msg.id

    def _reveal_expired(self) -> None:
        now = time.monotonic()
        expired = [r for r, m in self.hidden.items() if m.visible_at <= now]
        for receipt in expired:
            self.ready.appendleft(self.hidden.pop(receipt))

    def receive(self, n: int, counter: itertools.count[int]) -> list[_Message]:
        if self.hidden:
            self._reveal_expired()
        out: list[_Message] = []
        while self.ready and len(out) < n:
            msg = self.ready.popleft()
            msg.receives += 1
            msg.receipt = f"{msg.id}#{next(counter)}"
            msg.visible_at = time.monotonic() + self.visibility
            self.hidden[msg.receipt] = msg
            out.append(msg)
        return out

    def in_flight(self) -> int:
        return len(self.hidden)


class FakeSQS:
    def __init__(self) -> None:
        self.queues: dict[str, FakeQueue] = {}
        self.url = ""
        self._receipts = itertools.count(1)
        self._listener = Listener(shutdown_timeout=0.5)

    def create_queue(self, name: str, visibility: float = 30.0) -> str:
        self.queues.setdefault(name, FakeQueue(name, visibility))
        return self.queue_url(name)

    def queue_url(self, name: str) -> str:
        return f"{self.url}/123456789012/{name}"

    def queue(self, url_or_name: str) -> FakeQueue:
        return self.queues[url_or_name.rstrip("/").rsplit("/", 1)[-1]]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(client_max_size=2 * 1024 * 1024)
        app.router.add_post("/", self._dispatch)
        self.url = f"http://{host}:{await self._listener.start(app, host, port)}"
        return self.url

    async def stop(self) -> None:
        await self._listener.stop()

    @staticmethod
    def _error(code: str, message: str, status: int = 400) -> web.Response:
        return web.json_response({"__type": f"com.amazonaws.sqs#{code}", "message": message}, status=status,
                                 content_type="application/x-amz-json-1.0")

    async def _dispatch(self, request: web.Request) -> web.Response:
        action = request.headers.get("X-Amz-Target", "").removeprefix("AmazonSQS.")
        body = json.loads(await request.read())
        if action == "CreateQueue":
            return self._ok({"QueueUrl": self.create_queue(body["QueueName"])})
        if action == "GetQueueUrl":
            if body.get("QueueName") not in self.queues:
                return self._error("QueueDoesNotExist", "The specified queue does not exist.")
            return self._ok({"QueueUrl": self.queue_url(body["QueueName"])})
        try:
            queue = self.queue(body.get("QueueUrl", ""))
        except KeyError:
            return self._error("QueueDoesNotExist", "The specified queue does not exist.")
        handler = getattr(self, f"_{action}", None)
        if handler is None:
            return self._error("UnsupportedOperation", f"{action} is not supported by the fake")
        result: dict[str, Any] = await handler(queue, body)
        return self._ok(result)

    @staticmethod
    def _ok(payload: dict[str, Any]) -> web.Response:
        return web.json_response(payload, content_type="application/x-amz-json-1.0")

    async def _SendMessage(self, queue: FakeQueue, body: dict[str, Any]) -> dict[str, Any]:
        message_id = queue.send(body["MessageBody"])
        return {"MessageId": message_id, "MD5OfMessageBody": hashlib.md5(body["MessageBody"].encode()).hexdigest()}  # noqa: S324

    async def _ReceiveMessage(self, queue: FakeQueue, body: dict[str, Any]) -> dict[str, Any]:
        n = int(body.get("MaxNumberOfMessages", 1))
        deadline = time.monotonic() + float(body.get("WaitTimeSeconds", 0))
        while True:
            got = queue.receive(n, self._receipts)
            remaining = deadline - time.monotonic()
            if got or remaining <= 0:
                break
            queue.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queue.arrived.wait(), min(remaining, 0.5))
        return {"Messages": [{
            "MessageId": m.id, "ReceiptHandle": m.receipt, "Body": m.body,
            "MD5OfBody": hashlib.md5(m.body.encode()).hexdigest(),  # noqa: S324 - SQS's own checksum
            "Attributes": {"SentTimestamp": str(m.sent_ms), "ApproximateReceiveCount": str(m.receives)},
        } for m in got]} if got else {}

    async def _DeleteMessage(self, queue: FakeQueue, body: dict[str, Any]) -> dict[str, Any]:
        if queue.hidden.pop(body["ReceiptHandle"], None) is not None:
            queue.deleted += 1
        return {}

    async def _DeleteMessageBatch(self, queue: FakeQueue, body: dict[str, Any]) -> dict[str, Any]:
        done = []
        for entry in body.get("Entries", []):
            if queue.hidden.pop(entry["ReceiptHandle"], None) is not None:
                queue.deleted += 1
            done.append({"Id": entry["Id"]})
        return {"Successful": done, "Failed": []}

    async def _ChangeMessageVisibilityBatch(self, queue: FakeQueue, body: dict[str, Any]) -> dict[str, Any]:
        done = []
        for entry in body.get("Entries", []):
            msg = queue.hidden.get(entry["ReceiptHandle"])
            if msg is not None:
                msg.visible_at = time.monotonic() + float(entry["VisibilityTimeout"])
            done.append({"Id": entry["Id"]})
        return {"Successful": done, "Failed": []}

    async def _GetQueueAttributes(self, queue: FakeQueue, body: dict[str, Any]) -> dict[str, Any]:
        return {"Attributes": {"ApproximateNumberOfMessages": str(len(queue.ready)),
                               "ApproximateNumberOfMessagesNotVisible": str(queue.in_flight()),
                               "QueueArn": f"arn:aws:sqs:us-east-1:123456789012:{queue.name}"}}


async def _fill(request: web.Request) -> web.Response:
    """Benchmarks: enqueue `count` copies of `template` with `{i}` replaced by start..start+count-1,
    generated here so the client under test does not pay for producing its own input."""
    fake: FakeSQS = request.app["fake"]
    spec = await request.json()
    queue = fake.queue(spec["queue"])
    template: str = spec["template"]
    for i in range(int(spec["start"]), int(spec["start"]) + int(spec["count"])):
        queue.ready.append(_Message(str(uuid.uuid4()), template.replace("{i}", str(i)), int(time.time() * 1000)))
    queue.arrived.set()
    return web.json_response({"ready": len(queue.ready), "deleted": queue.deleted})


async def _stats(request: web.Request) -> web.Response:
    fake: FakeSQS = request.app["fake"]
    return web.json_response({name: {"ready": len(q.ready), "in_flight": q.in_flight(), "deleted": q.deleted}
                              for name, q in fake.queues.items()})


def main(argv: list[str] | None = None) -> int:
    """`python -m sender.demo.fakesqs --port 0 --queue NAME`: prints {"fake_sqs": url, "queue_url": …}."""
    import argparse

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9324)
    p.add_argument("--queue", default="ses-events")
    p.add_argument("--visibility", type=float, default=30.0)
    args = p.parse_args(argv)
    control_listener = Listener()  # held here for as long as the fake serves

    async def start() -> dict[str, Any]:
        fake = FakeSQS()
        app_url = await fake.start(args.host, args.port)
        control = web.Application(client_max_size=64 * 1024 * 1024)
        control["fake"] = fake
        control.router.add_post("/_fake/fill", _fill)
        control.router.add_get("/_fake/stats", _stats)
        control_port = await control_listener.start(control, args.host, 0)
        queue_url = fake.create_queue(args.queue, args.visibility)
        return {"fake_sqs": app_url, "queue_url": queue_url, "control": f"http://{args.host}:{control_port}"}

    return serve_until_interrupted(start)


if __name__ == "__main__":
    raise SystemExit(main())
