"""The command line and the Python API, each used the way a user would."""

import asyncio
import os
import re
import subprocess
import sys
import textwrap

import pytest

from gaspar2 import client

from conftest import ROOT, Server

pytestmark = pytest.mark.timeout(120)


def gaspar2_cli(*args, stdin=b"", cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "gaspar2", *args], input=stdin,
                          capture_output=True, cwd=cwd, timeout=60)


def test_request_command(serve):
    server = serve("gaspar2.examples:echo", "--workers", "1")
    assert ("serving gaspar2.examples:echo on 127.0.0.1:%d with 1 worker" % server.port
            in server.log())
    done = gaspar2_cli("request", server.url, "hello")
    assert (done.returncode, done.stdout) == (0, b"hello")
    binary = bytes(range(256)) * 10
    done = gaspar2_cli("request", server.url, stdin=binary)
    assert (done.returncode, done.stdout) == (0, binary)
    done = gaspar2_cli("request", server.url, "-", stdin=b"")
    assert (done.returncode, done.stdout) == (0, b"")


def test_request_command_failures(serve):
    server = serve("tests.handlers:fail", "--workers", "1")
    done = gaspar2_cli("request", server.url, "boom")
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode().count("\n") == 1 and "reset" in done.stderr.decode()
    server.stop()
    done = gaspar2_cli("request", server.url, "anyone?")
    assert done.returncode == 1 and "refused" in done.stderr.decode()


def test_handler_module_in_the_current_directory(tmp_path):
    (tmp_path / "myhandlers.py").write_text("def shout(m):\n    return m.upper()\n")
    server = Server("myhandlers:shout", ["--workers", "1"], tmp_path / "log", cwd=tmp_path)
    try:
        server.wait_serving()
        assert client.request(server.url, b"quiet", timeout=30) == b"QUIET"
    finally:
        server.stop()


def test_setup_failure_exits_non_zero_with_the_traceback(tmp_path):
    server = Server("tests.handlers:BrokenSetup", ["--workers", "2"], tmp_path / "log")
    assert server.wait_exit() != 0
    log = server.log()
    assert "RuntimeError: cannot open the model file" in log
    assert "setup() failed" in log
    server.stop()


def test_bad_target_is_a_clear_error(tmp_path):
    done = gaspar2_cli("serve", "no_such_module:thing", "--port", "0")
    assert done.returncode == 4 and b"cannot load no_such_module:thing" in done.stderr
    done = gaspar2_cli("serve", "gaspar2.examples", "--port", "0")
    assert done.returncode == 2 and b"expected MODULE:ATTR" in done.stderr


def test_python_api_under_gevent(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent("""
        from gevent import monkey; monkey.patch_all()
        import gevent, gaspar2
        from tests.handlers import echo

        producer = gaspar2.Producer(gaspar2.Consumer(handler=echo), 0, processes=2)
        producer.start(blocking=False)
        assert producer.running.is_set() and not producer.stopped.is_set()
        url = "%s:%d" % producer.address
        calls = [gevent.spawn(gaspar2.client.request, url, b"n%d" % i, 30) for i in range(40)]
        gevent.joinall(calls, raise_error=True)
        assert [c.value for c in calls] == [b"n%d" % i for i in range(40)]
        producer.stop()
        assert producer.stopped.is_set() and not producer.running.is_set()
        print("api ok")
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, cwd=ROOT,
                          timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"api ok\n"


@pytest.mark.parametrize("kind", ["unix", "inherited-tcp"])
def test_a_stop_serves_the_connections_already_in_the_listen_queue(tmp_path, kind):
    """Clients whose connections the kernel completed before the stop, and who sent their
    requests, are answered: the producer takes them in before it closes its listeners.
    The producer's thread makes them and stops without a wait in between, so the listener's
    watcher never sees them; on listeners whose stop waits for no handshake: a unix socket,
    and a TCP socket the producer was given (fd://), which it leaves as given."""
    script = tmp_path / "queued.py"
    script.write_text(textwrap.dedent("""
        import socket, struct, sys, gaspar2
        from tests.handlers import echo

        if sys.argv[1] == "unix":
            family, address = socket.AF_UNIX, sys.argv[2]
            bind = "unix:" + address
        else:
            given = socket.socket()
            given.bind(("127.0.0.1", 0))
            family, address = socket.AF_INET, given.getsockname()
            bind = "fd://%d" % given.fileno()
        producer = gaspar2.Producer(gaspar2.Consumer(handler=echo), processes=1, bind=[bind])
        producer.start(blocking=False)
        queued = []
        for i in range(5):
            sock = socket.socket(family)
            sock.connect(address)
            body = b"queued %d" % i
            sock.sendall(struct.pack("!I", len(body)) + body)
            queued.append(sock)
        producer.stop()
        for i, sock in enumerate(queued):
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            assert b"".join(chunks) == b"queued %d" % i, b"".join(chunks)
        print("all answered")
    """))
    done = subprocess.run([sys.executable, str(script), kind, str(tmp_path / "g.sock")],
                          capture_output=True, cwd=ROOT, timeout=60,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"all answered\n"


def test_asyncio_client_and_pack(serve):
    server = serve("tests.handlers:work", "--workers", "2")

    async def main():
        replies = await asyncio.gather(*(client.arequest(server.url, b"a%d" % i, 30)
                                         for i in range(20)))
        assert replies == [b"a%d" % i for i in range(20)]
        with pytest.raises(client.RequestFailed, match="reset"):
            await client.arequest(server.url, b"fail", 30)
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(client.pack("packed ✓"))
        assert await reader.read() == "packed ✓".encode()
        writer.close()

    asyncio.run(main())
    assert client.pack(b"") == b"\x00\x00\x00\x00"


def docs_embedding_example():
    """The gevent program of docs/howto/embedding.rst, which includes it from this file."""
    with open(os.path.join(ROOT, "docs", "examples", "embed_gevent.py")) as f:
        return f.read()


@pytest.mark.parametrize("patched", [True, False], ids=["monkey-patched", "plain"])
def test_docs_embedding_example_runs_as_written(tmp_path, patched):
    source = docs_embedding_example()
    if not patched:
        source = re.sub(r"from gevent import monkey\n+monkey\.patch_all\(\)\n", "", source)
        assert "patch_all" not in source
    (tmp_path / "app.py").write_text(source)
    done = subprocess.run([sys.executable, "app.py"], capture_output=True, cwd=tmp_path, timeout=90)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"[%s]\n" % b", ".join(b"b'IMG%d'" % n for n in range(8))


def test_request_command_over_unix_sockets(serve, tmp_path):
    path = tmp_path / "g.sock"
    abstract = "unix:@gaspar2-cli-%d" % os.getpid()
    serve("gaspar2.examples:echo", "--workers", "1", "--bind", "unix:%s" % path,
          "--bind", abstract)
    for url in ("unix:%s" % path, abstract):
        done = gaspar2_cli("request", url, "to " + url)
        assert (done.returncode, done.stdout) == (0, b"to " + url.encode())
    done = gaspar2_cli("request", "unix:%s" % (tmp_path / "none.sock"), "x")
    assert done.returncode == 1 and b"refused" in done.stderr


def test_request_timeout_zero_is_no_limit(serve):
    server = serve("tests.handlers:work", "--workers", "1")
    done = gaspar2_cli("request", "--timeout", "0", server.url, "pid:0.2")
    assert done.returncode == 0 and done.stdout.isdigit()
    done = gaspar2_cli("request", "--timeout", "0.2", server.url, "pid:5")
    assert done.returncode == 1 and b"no reply within 0.2 s" in done.stderr
    done = gaspar2_cli("request", "--timeout", "-1", server.url, "x")
    assert done.returncode == 2 and b"--timeout" in done.stderr


def test_request_into_a_closed_pipe_ends_quietly(serve):
    """``gaspar2 request ... | head -c 1``: no traceback, the shell's status for SIGPIPE."""
    server = serve("gaspar2.examples:echo", "--workers", "1")
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = subprocess.run([sys.executable, "-m", "gaspar2", "request", server.url],
                              input=b"x" * (4 << 20), stdout=writer, stderr=subprocess.PIPE,
                              cwd=ROOT, timeout=60)
    finally:
        os.close(writer)
    assert (done.returncode, done.stderr) == (141, b"")


MEASURE_PEAK = """\
import resource, subprocess, sys
with open(sys.argv[1], "rb") as body, open(sys.argv[2], "wb") as reply:
    code = subprocess.call([sys.executable, "-m", "gaspar2", "request", *sys.argv[3:]],
                           stdin=body if sys.argv[3] != "-f" else None, stdout=reply)
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


@pytest.mark.parametrize("how", ["stdin", "pipe", "file"])
def test_a_100_mb_request_is_streamed_under_a_memory_bound(serve, tmp_path, how):
    """Neither the message nor the reply is held whole: peak RSS stays under 80 MB."""
    server = serve("gaspar2.examples:echo", "--workers", "1", "--max-message-size", "128MiB")
    body = tmp_path / "body"
    with open(body, "wb") as out:
        for _ in range(100):
            out.write(os.urandom(1 << 20))
    arguments = {"stdin": [server.url], "file": ["-f", str(body), server.url],
                 "pipe": [server.url]}[how]
    source = str(body)
    if how == "pipe":           # standard input is a pipe, not a file: spooled, then sent
        source = "/dev/stdin"
        feeder = subprocess.Popen(["cat", str(body)], stdout=subprocess.PIPE)
    else:
        feeder = None
    done = subprocess.run([sys.executable, "-c", MEASURE_PEAK, source, str(tmp_path / "reply"),
                           *arguments], stdin=feeder.stdout if feeder else None,
                          capture_output=True, cwd=ROOT, timeout=100)
    if feeder:
        feeder.stdout.close()
        feeder.wait()
    code, peak_kb = map(int, done.stdout.split())
    assert code == 0, done.stderr
    assert (tmp_path / "reply").stat().st_size == body.stat().st_size
    with open(body, "rb") as sent, open(tmp_path / "reply", "rb") as got:
        while chunk := sent.read(1 << 20):
            assert got.read(1 << 20) == chunk
    assert peak_kb < 80_000, "peak RSS %d KB" % peak_kb


def test_a_misspelt_flag_is_answered_with_the_nearest(tmp_path):
    done = gaspar2_cli("serve", "tests.handlers:work", "--wokers", "2", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == b""
    assert b"did you mean --workers?" in done.stderr
    assert done.stderr.startswith(b"usage: gaspar2 serve")
