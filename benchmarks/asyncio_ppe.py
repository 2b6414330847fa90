"""Baseline: what a Python user writes instead today.

``asyncio.start_server``, each request's handler run by
``loop.run_in_executor(ProcessPoolExecutor(W), handler, payload)``.

    python benchmarks/asyncio_ppe.py MODULE:ATTR [--port P] [--workers W] [--backlog N]
"""

import asyncio
import concurrent.futures
import os
import signal
import socket
import struct

from common import announce, load_handler, server_args

handler = None


def init_worker(spec):
    """Runs in each pool process: import the handler once."""
    global handler
    handler = load_handler(spec)


def call(payload):
    return handler(payload)


def reset(writer):
    """The protocol's failure signal: close with SO_LINGER 0, so the peer sees a reset."""
    sock = writer.get_extra_info("socket")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (AttributeError, OSError):
        pass                            # already closed by the peer
    writer.transport.abort()


def make_handle(pool):
    loop = asyncio.get_running_loop()

    async def handle(reader, writer):
        try:
            (length,) = struct.unpack("!I", await reader.readexactly(4))
            payload = await reader.readexactly(length)
            reply = await loop.run_in_executor(pool, call, payload)
            writer.write(reply)
            await writer.drain()
        except (Exception, asyncio.CancelledError):   # cancelled: the server is stopping
            return reset(writer)
        writer.close()
    return handle


async def serve(args):
    pool = concurrent.futures.ProcessPoolExecutor(args.workers, initializer=init_worker,
                                                  initargs=(args.target,))
    loop = asyncio.get_running_loop()
    # Start every pool process (and import the handler there) before saying ready.
    await asyncio.gather(*(loop.run_in_executor(pool, os.getpid) for _ in range(args.workers)))
    server = await asyncio.start_server(make_handle(pool), args.host, args.port,
                                        backlog=args.backlog)
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    announce("asyncio-ppe", args.host, server.sockets[0].getsockname()[1])
    async with server:
        await stopping.wait()
    pool.shutdown(cancel_futures=True)


if __name__ == "__main__":
    asyncio.run(serve(server_args(__doc__, workers=True)))
