"""gaspar2.client against a live server: one error class per kind of failure, and the
Executor."""

import asyncio
import concurrent.futures
import io
import os
import socket

import pytest

from gaspar2 import client

from conftest import Server, module_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Echoes; ``fail`` makes the handler raise, ``pid:SECONDS`` makes it sleep."""
    server = module_server(tmp_path_factory, "tests.handlers:work", "--workers", "1")
    yield server
    server.stop()


@pytest.fixture
def refusing_url():
    # A bound port that does not listen refuses connections, and no one else can take it.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        yield "127.0.0.1:%d" % closed.getsockname()[1]


@pytest.fixture(params=["request", "arequest"])
def send(request):
    """client.request, or client.arequest run to completion: same arguments, same errors."""
    if request.param == "request":
        return client.request
    return lambda *args, **kwargs: asyncio.run(client.arequest(*args, **kwargs))


def test_a_reply_even_empty_is_a_success(send, server):
    assert send(server.url, "hello", timeout=30) == b"hello"
    assert send(server.url, b"", timeout=30) == b""


def test_failure_on_the_server_is_request_reset(send, server):
    with pytest.raises(client.RequestReset, match="connection reset") as caught:
        send(server.url, b"fail", timeout=30)
    assert isinstance(caught.value, client.RequestFailed)
    assert isinstance(caught.value, ConnectionResetError)
    assert isinstance(caught.value.__cause__, ConnectionResetError)
    assert "asked to fail" in server.log()


def test_refusal_is_request_refused(send, refusing_url):
    with pytest.raises(client.RequestRefused, match="refused") as caught:
        send(refusing_url, b"anyone?", timeout=30)
    assert isinstance(caught.value, client.RequestFailed)
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


def test_no_reply_in_time_is_request_timeout(send, server):
    with pytest.raises(client.RequestTimeout, match=r"no reply within 0\.2 s") as caught:
        send(server.url, b"pid:1", timeout=0.2)
    assert isinstance(caught.value, client.RequestFailed)
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.__cause__ is None


def test_each_failure_is_only_its_own_class(server, refusing_url):
    failures = []
    for url, message, timeout in [(server.url, b"fail", 30), (refusing_url, b"x", 30),
                                  (server.url, b"pid:1", 0.2)]:
        with pytest.raises(client.RequestFailed) as caught:
            client.request(url, message, timeout)
        failures.append(type(caught.value))
    assert failures == [client.RequestReset, client.RequestRefused, client.RequestTimeout]


def test_executor_runs_a_hundred_requests_and_reports_a_failure(server):
    with client.Executor(server.url, max_workers=8, timeout=30) as executor:
        assert isinstance(executor, concurrent.futures.Executor)
        futures = {executor.submit(b"message %d" % i): i for i in range(100)}
        failing = executor.submit("fail")
        for future in concurrent.futures.as_completed(futures, timeout=60):
            assert future.result() == b"message %d" % futures[future]
        assert isinstance(failing.exception(timeout=60), client.RequestReset)
        with pytest.raises(client.RequestReset):
            failing.result()


def test_executor_map_keeps_the_order_and_raises_the_first_failure(server):
    with client.Executor(server.url, max_workers=4) as executor:
        messages = [b"%d" % i for i in range(20)]
        assert list(executor.map(messages, timeout=60)) == messages
        replies = executor.map([b"a", b"fail", b"b"], timeout=60)
        assert next(replies) == b"a"
        with pytest.raises(client.RequestReset):
            next(replies)


def test_executor_refuses_work_after_shutdown(server):
    executor = client.Executor(server.url)
    assert executor.submit(b"last").result(timeout=60) == b"last"
    executor.shutdown()
    with pytest.raises(RuntimeError):
        executor.submit(b"too late")


def test_executor_checks_its_url_at_once():
    with pytest.raises(ValueError, match="HOST:PORT"):
        client.Executor("no port here")


@pytest.fixture(scope="module")
def unix_server(tmp_path_factory):
    """Echoes on TCP, on a unix socket's file and on an abstract unix socket."""
    directory = tmp_path_factory.mktemp("unix")
    name = "gaspar2-test-%d" % os.getpid()
    server = Server("tests.handlers:work",
                    ["--workers", "1", "--bind", "127.0.0.1:0",
                     "--bind", "unix:%s" % (directory / "g.sock"), "--bind", "unix:@" + name],
                    directory / "server.log", port=None).wait_serving()
    server.unix_urls = ["unix:%s" % (directory / "g.sock"), "unix:@" + name]
    yield server
    server.stop()


def executor_request(url, message, timeout=None):
    with client.Executor(url, max_workers=2, timeout=timeout) as executor:
        return executor.submit(message).result()


@pytest.mark.parametrize("call", [client.request, executor_request,
                                  lambda *a, **k: asyncio.run(client.arequest(*a, **k))],
                         ids=["request", "Executor", "arequest"])
def test_unix_sockets_from_every_python_client(unix_server, call):
    for number, url in enumerate(unix_server.unix_urls):
        body = b"%s over %s" % (bytes(range(number, number + 200)), url.encode())
        assert call(url, body, timeout=30) == body
        with pytest.raises(client.RequestReset):
            call(url, b"fail", timeout=30)


@pytest.mark.parametrize("url", ["unix:/nonexistent/g.sock", "unix:@gaspar2-nobody-listens"])
def test_unix_socket_nobody_listens_on_is_refused(send, url):
    with pytest.raises(client.RequestRefused):
        send(url, b"x", timeout=10)


@pytest.mark.parametrize("url", ["unix:", "unix:@", "nowhere"])
def test_malformed_address_is_a_value_error(url):
    with pytest.raises(ValueError):
        client.request(url, b"x")
    with pytest.raises(ValueError):
        client.Executor(url)


def test_request_file_streams_both_ways(unix_server, tmp_path):
    body = os.urandom(3 << 20)
    (tmp_path / "body").write_bytes(b"skipped" + body)
    with open(tmp_path / "body", "rb") as file:
        file.seek(len(b"skipped"))
        assert client.request_file(unix_server.url, file, timeout=30) == body
        file.seek(len(b"skipped"))
        received = io.BytesIO()
        assert client.request_file(unix_server.unix_urls[0], file, timeout=30,
                                   reply_to=received) == b""
    assert received.getvalue() == body
