"""The clients under client/ (C, Node.js, Perl, Java), built and run against live servers.

Each client's gaspar2-request command is run as a user would run it; a small program per
language also checks that its library reports a reset distinctly from an empty reply.
"""

import os
import random
import shutil
import socket
import subprocess

import pytest

from conftest import ROOT, Server

pytestmark = pytest.mark.timeout(120)

CLIENT = os.path.join(ROOT, "client")
LANGUAGES = ["c", "node", "perl", "java"]
RESET = "connection reset"


def run(argv, stdin=b"", **kwargs):
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=90, **kwargs)


def need(*tools):
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip("%s not found on PATH" % ", ".join(missing))


def build(argv, cwd):
    done = run(argv, cwd=cwd)
    assert done.returncode == 0, "%s failed:\n%s" % (argv[0], done.stderr.decode())


# Servers and builds are shared by the whole module: each is started or built once.

def start(target, tmp_path_factory):
    server = Server(target, ["--workers", "1"], tmp_path_factory.mktemp("server") / "server.log")
    return server.wait_serving()


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory):
    server = start("gaspar2.examples:echo", tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fail_server(tmp_path_factory):
    server = start("tests.handlers:fail", tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def c_build(tmp_path_factory):
    need("cc")
    out = tmp_path_factory.mktemp("c")
    # -Werror: the Makefile's warning flags must stay quiet.
    build(["cc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out / "gaspar2-request"),
           "gaspar2-request.c", "gaspar2.c"], cwd=os.path.join(CLIENT, "c"))
    return out


@pytest.fixture(scope="module")
def java_build(tmp_path_factory):
    need("javac", "java")
    out = tmp_path_factory.mktemp("java")
    build(["javac", "-Xlint:all", "-Werror", "-d", str(out), "Gaspar2.java"],
          cwd=os.path.join(CLIENT, "java"))
    return out


@pytest.fixture(scope="module", params=LANGUAGES)
def cli(request):
    """The gaspar2-request command line of one client."""
    language = request.param
    if language == "c":
        return [str(request.getfixturevalue("c_build") / "gaspar2-request")]
    if language == "java":
        return ["java", "-cp", str(request.getfixturevalue("java_build")), "gaspar2.Gaspar2"]
    if language == "node":
        need("node")
        return ["node", os.path.join(CLIENT, "node", "gaspar2-request.js")]
    need("perl")
    return ["perl", os.path.join(CLIENT, "perl", "gaspar2-request.pl")]


def assert_echo(done, expected):
    assert done.stderr == b""
    assert done.returncode == 0
    assert len(done.stdout) == len(expected) and done.stdout == expected


def assert_failed(done, words):
    """Exit 1, nothing on stdout (not even an empty success), one line on stderr."""
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 1, err
    assert done.stdout == b""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert words in err, err


def test_text_message(cli, echo_server):
    assert_echo(run(cli + [echo_server.url, "hello, gaspar2"]), b"hello, gaspar2")


def test_message_from_stdin_with_dash(cli, echo_server):
    assert_echo(run(cli + [echo_server.url, "-"], stdin=b"from stdin\n"), b"from stdin\n")


def test_binary_message_with_every_byte_value(cli, echo_server):
    payload = bytes(range(256)) * 16 + b"\0\0\r\n\0"
    assert_echo(run(cli + [echo_server.url], stdin=payload), payload)


def test_one_mebibyte(cli, echo_server):
    payload = random.Random(2).randbytes(1 << 20)
    assert_echo(run(cli + [echo_server.url], stdin=payload), payload)


def test_empty_message_gets_an_empty_reply(cli, echo_server):
    assert_echo(run(cli + [echo_server.url], stdin=b""), b"")
    assert_echo(run(cli + [echo_server.url, "-"], stdin=b""), b"")


def test_handler_error_is_reported_as_a_reset(cli, fail_server):
    assert_failed(run(cli + [fail_server.url, "boom"]), RESET)
    assert_failed(run(cli + [fail_server.url], stdin=b""), RESET)
    assert_failed(run(cli + [fail_server.url], stdin=bytes(1 << 20)), RESET)
    assert "ValueError: handler refuses" in fail_server.log()


def test_refused(cli):
    # A bound port that does not listen refuses connections, and no one else can take it.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        assert_failed(run(cli + ["127.0.0.1:%d" % closed.getsockname()[1], "anyone?"]), "refused")


def test_timeout(cli):
    # The kernel completes the connection, but nothing ever accepts it or replies.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = "127.0.0.1:%d" % silent.getsockname()[1]
        assert_failed(run(cli + ["--timeout", "0.5", url, "hello?"]), "timed out")


def test_usage_error(cli):
    done = run(cli)
    assert done.returncode == 2 and done.stdout == b""
    assert done.stderr.decode().startswith("usage: gaspar2-request")


# The libraries themselves: an empty message to the echo server is an empty success, the
# failing handler is a reset, and a refused connection is something else again.

C_PROBE = r"""
#include <stdio.h>
#include <stdlib.h>
#include "gaspar2.h"

int main(int argc, char **argv)
{
    unsigned char *reply;
    size_t len;
    int rc = gaspar2_request(argv[1], argv[2], "", 0, &reply, &len, 30000);
    if (rc == GASPAR2_OK)
        printf("ok %zu\n", len);
    else if (rc == GASPAR2_ERESET)
        printf("reset\n");
    else
        printf("other %d\n", rc);
    free(reply);
    return argc == 3 ? 0 : 2;
}
"""

NODE_PROBE = r"""
const { request } = require(process.argv[1]);
request(process.argv[2], Buffer.alloc(0), { timeout: 30000 }).then(
  (reply) => console.log(`ok ${reply.length}`),
  (err) => console.log(err.code === 'ECONNRESET' ? 'reset' : `other ${err.code}`));
"""

PERL_PROBE = r"""
use Gaspar2 qw(request);
my $reply = eval { request($ARGV[0], '', timeout => 30) };
print defined $reply ? 'ok ' . length($reply) . "\n" : $@ =~ /reset/ ? "reset\n" : "other $@";
"""

JAVA_PROBE = r"""
import gaspar2.Gaspar2;

public class Probe {
    public static void main(String[] args) throws Exception {
        try {
            System.out.println("ok " + Gaspar2.request(args[0], new byte[0], 30000).length);
        } catch (Gaspar2.RequestFailed e) {
            System.out.println("reset");
        } catch (java.io.IOException e) {
            System.out.println("other " + e);
        }
    }
}
"""


@pytest.fixture(scope="module", params=LANGUAGES)
def probe(request, tmp_path_factory):
    """A function: url -> "ok LENGTH", "reset" or "other ...", from one client library."""
    language = request.param
    if language == "c":
        need("cc")
        out = tmp_path_factory.mktemp("cprobe")
        (out / "probe.c").write_text(C_PROBE)
        source = os.path.join(CLIENT, "c")
        build(["cc", "-Wall", "-Wextra", "-I", source, "-o", str(out / "probe"),
               str(out / "probe.c"), os.path.join(source, "gaspar2.c")], cwd=out)
        argv = lambda url: [str(out / "probe")] + url.rsplit(":", 1)
    elif language == "node":
        need("node")
        module = os.path.join(CLIENT, "node", "gaspar2.js")
        argv = lambda url: ["node", "-e", NODE_PROBE, module, url]
    elif language == "perl":
        need("perl")
        argv = lambda url: ["perl", "-I", os.path.join(CLIENT, "perl"), "-e", PERL_PROBE, url]
    else:
        out = tmp_path_factory.mktemp("javaprobe")
        (out / "Probe.java").write_text(JAVA_PROBE)
        classes = request.getfixturevalue("java_build")
        build(["javac", "-cp", str(classes), "-d", str(out), "Probe.java"], cwd=out)
        argv = lambda url: ["java", "-cp", "%s%s%s" % (classes, os.pathsep, out), "Probe", url]

    def result(url):
        done = run(argv(url))
        assert done.returncode == 0 and done.stderr == b"", done.stderr.decode()
        return done.stdout.decode().strip()
    return result


def test_library_tells_a_reset_from_an_empty_reply(probe, echo_server, fail_server):
    assert probe(echo_server.url) == "ok 0"
    assert probe(fail_server.url) == "reset"
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        assert probe("127.0.0.1:%d" % closed.getsockname()[1]).startswith("other")
