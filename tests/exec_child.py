"""A program for ``gaspar2 serve --exec``, steered by its requests, so that one server shows
every behaviour a child can have. Run without a shell: ``python tests/exec_child.py $WID``.

``fail:TEXT``: fail the request with TEXT. ``exit:N``: exit N without answering.
``signal:NAME``: kill itself with SIGNAME. ``garbage``: write text, not an answer. ``huge``:
announce a 3 GiB reply. ``spin:S:PATH``: write its pid to PATH, then a busy loop of S
seconds, then echo. ``stderr:N``: N lines on stderr, then answer N. ``flood:S``: stderr as
fast as it goes for S seconds, then answer. ``env``: its worker id (environment, argument)
and its worker's pid. ``pid``: its pid. ``count:PATH:TEXT``: append its pid to PATH, answer
TEXT. ``close``: close stdout and sleep. ``trailing``: an answer with bytes after it.
``cut:N:...``: echo, the answer written in two pieces, the first N bytes long. Anything else is
echoed.
"""

import os
import signal
import struct
import sys
import time

stdin, stdout = sys.stdin.buffer, sys.stdout.buffer


def answer(kind, body):
    stdout.write(struct.pack("!BI", kind, len(body)) + body)
    stdout.flush()


def serve(message):
    command, _, arg = message.partition(b":")
    if command == b"fail":
        return answer(1, arg)
    if command == b"exit":
        os._exit(int(arg))
    if command == b"signal":
        os.kill(os.getpid(), getattr(signal, "SIG" + arg.decode()))
    if command == b"garbage":
        stdout.write(b"Hello! This is not an answer.\n")
        return stdout.flush()
    if command == b"huge":
        stdout.write(struct.pack("!BI", 0, 3 << 30))
        return stdout.flush()
    if command == b"spin":
        seconds, _, path = arg.partition(b":")
        if path:
            with open(path, "w") as f:
                f.write(str(os.getpid()))
        deadline = time.monotonic() + float(seconds)
        while time.monotonic() < deadline:
            pass
    if command == b"stderr":
        for n in range(int(arg)):
            sys.stderr.write("line %d of %s\n" % (n, arg.decode()))
        sys.stderr.flush()
        return answer(0, arg)
    if command == b"flood":
        deadline = time.monotonic() + float(arg)
        chunk = b"flood " * 1000 + b"\n"
        while time.monotonic() < deadline:
            os.write(2, chunk)
        return answer(0, b"flooded")
    if command == b"env":
        ids = (os.environ["GASPAR2_WORKER_ID"], sys.argv[1], os.getppid())
        return answer(0, ("%s %s %d" % ids).encode())
    if command == b"pid":
        return answer(0, str(os.getpid()).encode())
    if command == b"count":
        path, _, text = arg.partition(b":")
        with open(path, "a") as f:
            f.write("%d\n" % os.getpid())
        return answer(0, text)
    if command == b"trailing":
        stdout.write(struct.pack("!BI", 0, 2) + b"ok" + b"and more")
        return stdout.flush()
    if command == b"cut":                   # the answer in two writes, 5 ms apart
        whole = struct.pack("!BI", 0, len(message)) + message
        half = int(arg.partition(b":")[0]) % (len(whole) + 1)
        stdout.write(whole[:half])
        stdout.flush()
        time.sleep(0.005)
        stdout.write(whole[half:])
        return stdout.flush()
    if command == b"close":
        os.close(1)
        time.sleep(3600)
    return answer(0, message)


def main():
    while True:
        head = stdin.read(4)
        if len(head) < 4:
            return                  # end of file: the worker is leaving
        (length,) = struct.unpack("!I", head)
        serve(stdin.read(length))


if __name__ == "__main__":
    main()
