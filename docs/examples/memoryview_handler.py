import zlib

import gaspar2


class Checksum(gaspar2.Consumer):
    accepts_memoryview = True          # or Consumer(handler=f, accepts_memoryview=True)

    def handle(self, message):         # a memoryview, valid during this call only
        return b"%08x" % zlib.crc32(message)


if __name__ == "__main__":
    producer = gaspar2.Producer(Checksum(), 0, processes=2)
    producer.start_in_thread()
    body = bytes(range(256)) * 32768   # 8 MiB: it travels in shared memory
    reply = gaspar2.client.request("%s:%d" % producer.address, body, timeout=30)
    assert reply == b"%08x" % zlib.crc32(body)
    print(reply.decode())
    producer.stop()
