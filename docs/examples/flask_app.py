from flask import Flask

import gaspar2
from gaspar2 import client


def thumb(message: bytes) -> bytes:
    return b"thumbnail of " + message     # CPU-bound work, in a worker process


producer = gaspar2.Producer(thumb, 0, processes=2)
producer.start_in_thread()
URL = "%s:%d" % producer.address
app = Flask(__name__)


@app.route("/thumb/<name>")
def view(name: str) -> bytes:
    return client.request(URL, name.encode(), timeout=10)


if __name__ == "__main__":
    app.run(threaded=True)
