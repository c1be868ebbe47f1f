"""The waiting room's fair share: places go to campaigns in proportion to their rates (or evenly
when they have none), a campaign with little to send takes what it needs, and one flow is FIFO."""

from __future__ import annotations

import asyncio
from collections import Counter

from sender.ratelimit import WaitingRoom


async def _share(weights: dict[str, float], handouts: int, demand: dict[str, int] | None = None) -> Counter[str]:
    """Each flow keeps one request waiting (up to `demand` requests in all); the one place is handed
    out `handouts` times, in the order the room chooses. Who got it how often."""
    room = WaitingRoom(lambda: 1.0, at_least=1)
    got: Counter[str] = Counter()
    left = dict(demand or {})
    await room.acquire("holder")  # the one place is taken: everyone below has to wait

    async def flow(name: str) -> None:
        while left.get(name, 1) > 0:
            await room.acquire(name, weights[name])
            got[name] += 1
            if name in left:
                left[name] -= 1

    tasks = [asyncio.create_task(flow(name)) for name in weights]
    await asyncio.sleep(0)  # every flow's first request is waiting now (tasks run in creation order)
    for _ in range(handouts):
        room.release()  # the place passes on ...
        for _ in range(3):
            await asyncio.sleep(0)  # ... its new holder records it and queues its next request
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return got


async def test_places_go_in_proportion_to_the_campaigns_rates() -> None:
    got = await _share({"a": 80.0, "b": 40.0, "c": 40.0}, handouts=400)
    assert sum(got.values()) == 400
    assert abs(got["a"] - 200) <= 2 and abs(got["b"] - 100) <= 2 and abs(got["c"] - 100) <= 2, got


async def test_campaigns_without_a_rate_share_evenly() -> None:
    got = await _share({name: 200.0 for name in "abcd"}, handouts=400)
    assert set(got.values()) == {100}, got


async def test_a_campaign_with_little_to_send_takes_it_and_leaves_the_rest() -> None:
    got = await _share({"big": 10.0, "small": 10.0}, handouts=100, demand={"small": 5})
    assert got["small"] == 5 and got["big"] == 95, got


async def test_one_flow_is_first_come_first_served() -> None:
    room = WaitingRoom(lambda: 1.0, at_least=1)
    await room.acquire()
    order: list[int] = []

    async def request(n: int) -> None:
        await room.acquire()
        order.append(n)
        room.release()

    tasks = [asyncio.create_task(request(n)) for n in range(10)]
    await asyncio.sleep(0)
    room.release()
    await asyncio.gather(*tasks)
    assert order == list(range(10))


async def test_a_campaign_that_asks_again_only_after_its_last_request_passed_keeps_its_share() -> None:
    """A rated campaign has one request at the wire at a time (its own window): it asks again only
    after that one passed, three places later. Ten campaigns always waiting at weight 1, it at weight
    5: it gets a place each time it is back (1 in 4, all its turnaround allows, toward its 5/15), not
    one per round of the others (1 in 11), as when it lost its turn every time it was away."""
    room = WaitingRoom(lambda: 1.0, at_least=1)
    await room.acquire("holder")
    order: list[str] = []
    passed = asyncio.Event()  # the rated campaign's last request passed the wire

    async def always(name: str) -> None:
        while True:
            await room.acquire(name, 1.0)
            order.append(name)

    async def rated() -> None:
        while True:
            await room.acquire("rated", 5.0)
            order.append("rated")
            passed.clear()
            await passed.wait()

    tasks = [asyncio.create_task(always(f"c{i}")) for i in range(10)] + [asyncio.create_task(rated())]
    await asyncio.sleep(0)
    since = 0
    for _ in range(300):
        room.release()  # the place passes on ...
        for _ in range(3):
            await asyncio.sleep(0)  # ... its new holder records it and queues its next request
        since = 0 if order[-1] == "rated" else since + 1
        if since >= 3:
            passed.set()  # three places after its last one, the rated request has passed the wire
        for _ in range(3):
            await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert len(order) == 300
    assert order.count("rated") >= 70, Counter(order)  # 75 = one in four; it was 28 without the credit
