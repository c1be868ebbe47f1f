"""Attack: a request cancelled (its campaign paused) just as its place is handed out."""

from __future__ import annotations

import asyncio

import pytest

from sender.ratelimit import WaitingRoom


async def test_a_waiter_cancelled_while_its_place_is_handed_out_raises_cancelled_and_leaves_the_room_whole() -> None:
    room = WaitingRoom(lambda: 1.0, at_least=1)
    await room.acquire("holder")
    waiter = asyncio.create_task(room.acquire("paused", 1.0))
    await asyncio.sleep(0)  # it waits for the one place
    waiter.cancel()  # its campaign stops ...
    room.release()  # ... and in the same step the holder's request passes the wire: the place is handed on
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert room.pending == 0
    await asyncio.wait_for(room.acquire("next"), 1)  # the room still works
    assert room.pending == 1


async def test_a_new_request_gets_the_place_a_cancelled_waiter_left() -> None:
    room = WaitingRoom(lambda: 1.0, at_least=1)
    await room.acquire("holder")
    gone = asyncio.create_task(room.acquire("paused"))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    room.release()
    assert room.pending == 0
    await asyncio.wait_for(room.acquire("next"), 1)
    assert room.pending == 1
