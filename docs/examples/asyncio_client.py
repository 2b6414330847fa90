import asyncio

from gaspar2 import client


async def main() -> None:
    messages = [b"job %d" % n for n in range(100)]
    replies = await asyncio.gather(*(client.arequest("127.0.0.1:10123", m, timeout=30)
                                     for m in messages))
    print(len(replies), "replies, the last:", replies[-1].decode())


asyncio.run(main())
