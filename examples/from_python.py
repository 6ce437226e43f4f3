"""README's "From Python": publish, then read everything back, as a plain asyncio program.
The broker's address comes from SLIPSTREAM_BROKER when it is set."""

import asyncio
import contextlib
import os

from broker import Client


async def main() -> None:
    address = os.environ.get("SLIPSTREAM_BROKER", "127.0.0.1:20778")
    async with Client(address, name="my-tool") as client:
        await client.publish("demo.hello", {"lap": 1})       # msgpack-encoded
        seq = await client.publish("demo.hello", {"lap": 2}, confirm=True)
        print("stored as seq", seq)

        sub = await client.subscribe("demo.>", start="earliest", durable="my-tool")
        async for message in sub:
            if message.gap:                                   # loss is never silent
                print("lost", message.gap.missed, "before", message.seq)
            print(message.topic, message.seq, message.data)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
