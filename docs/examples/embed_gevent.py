from gevent import monkey

monkey.patch_all()

import time

import gevent

import gaspar2


def resize(message: bytes) -> bytes:
    time.sleep(0.1)                  # blocking work, in a worker process
    return message.upper()


def main() -> None:
    producer = gaspar2.Producer(resize, 0, processes=2)
    producer.start(blocking=False)   # returns once every worker is ready
    url = "%s:%d" % producer.address
    calls = [gevent.spawn(gaspar2.client.request, url, b"img%d" % n) for n in range(8)]
    gevent.joinall(calls, raise_error=True)
    print([call.value for call in calls])
    producer.stop()


if __name__ == "__main__":
    main()
