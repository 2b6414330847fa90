"""The clients under client/ (C, Node.js, Perl, Java), built, installed and run against live
servers, the way their users build and install them.

client/ is copied into a scratch git repository, where every build runs with its defaults;
the last test checks that git ignores all they wrote. Each client's own test suite runs
against a live server, each gaspar2-request command is run as a user would run it, and
every example of client/README.rst runs as written.
"""

import json
import os
import random
import re
import shutil
import socket
import subprocess

import pytest

import gaspar2

from conftest import ROOT, module_server

pytestmark = pytest.mark.timeout(180)

CLIENT = os.path.join(ROOT, "client")
LANGUAGES = ["c", "node", "perl", "java"]
RESET = "connection reset"
VERSION = gaspar2.__version__


def run(argv, stdin=b"", timeout=120, **kwargs):
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, **kwargs)


def need(*tools):
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip("%s not found on PATH" % ", ".join(missing))


def ok(argv, **kwargs):
    """Run a build or test step that must succeed; return its output."""
    done = run(argv, **kwargs)
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    assert done.returncode == 0, "%s failed:\n%s" % (" ".join(map(str, argv)), output)
    return output


# Servers, the scratch copy and the builds are shared by the whole module.

@pytest.fixture(scope="module")
def echo_server(tmp_path_factory):
    """tests.handlers:work: echoes, fails on "fail", sleeps on "pid:SECONDS"."""
    server = module_server(tmp_path_factory, "tests.handlers:work", "--workers", "1")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fail_server(tmp_path_factory):
    server = module_server(tmp_path_factory, "tests.handlers:fail", "--workers", "1")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def echo_server6(tmp_path_factory):
    """The same on [::1], or None where this machine has no IPv6 loopback."""
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        yield None
        return
    server = module_server(tmp_path_factory, "tests.handlers:work", "--workers", "1",
                           "--host", "::1")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def test_env(echo_server, echo_server6, unix_server):
    """The environment for the clients' own test suites."""
    env = dict(os.environ, GASPAR2_TEST_URL=echo_server.url)
    env.update(GASPAR2_TEST_UNIX=unix_server.unix_url, GASPAR2_TEST_ABSTRACT=unix_server.abstract)
    if echo_server6:
        env["GASPAR2_TEST_URL6"] = "[::1]:%d" % echo_server6.port
    return env


def source_files():
    """client/'s files as git sees them (tracked or not ignored), or all of them outside git."""
    if shutil.which("git"):
        done = run(["git", "ls-files", "-co", "--exclude-standard", "client"], cwd=ROOT)
        if done.returncode == 0 and done.stdout:
            return [p for p in done.stdout.decode().splitlines()
                    if os.path.isfile(os.path.join(ROOT, p))]
    return [os.path.relpath(os.path.join(d, f), ROOT) for d, _, fs in os.walk(CLIENT) for f in fs]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """A user's directory holding a checkout of gaspar2's clients in gaspar2/."""
    app = tmp_path_factory.mktemp("app")
    for path in source_files():
        target = app / "gaspar2" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(ROOT, path), target)
    return app


@pytest.fixture(scope="module")
def tree(app):
    return app / "gaspar2" / "client"


@pytest.fixture(scope="module")
def c_prefix(tree, tmp_path_factory):
    need("cc", "make")
    prefix = tmp_path_factory.mktemp("c-prefix")
    # -Werror: the Makefile's warning flags must stay quiet.
    ok(["make", "-C", tree / "c", "install", "PREFIX=%s" % prefix,
        "CFLAGS=-O2 -Wall -Wextra -Werror"])
    return prefix


@pytest.fixture(scope="module")
def node_app(tree, tmp_path_factory):
    """A Node.js project with the packed client installed, as a user installs it."""
    need("node", "npm")
    work = tmp_path_factory.mktemp("node-app")
    packed = json.loads(run(["npm", "pack", "--json", "--pack-destination", work, tree / "node"],
                            cwd=work).stdout)[0]["filename"]
    ok(["npm", "install", "--offline", "--no-audit", "--no-fund", work / packed], cwd=work)
    return work


@pytest.fixture(scope="module")
def perl_prefix(tree, tmp_path_factory):
    need("perl", "make")
    prefix = tmp_path_factory.mktemp("perl-prefix")
    ok(["perl", "Makefile.PL", "INSTALL_BASE=%s" % prefix], cwd=tree / "perl")
    ok(["make"], cwd=tree / "perl")
    ok(["make", "install"], cwd=tree / "perl")
    return prefix


@pytest.fixture(scope="module")
def java_jar(tree):
    need("javac", "java", "jar", "make")
    ok(["make", "-C", tree / "java"])
    return tree / "java" / "build" / ("gaspar2-%s.jar" % VERSION)


# Each gaspar2-request command, installed, as its users run it.

@pytest.fixture(scope="module", params=LANGUAGES)
def cli(request):
    language = request.param
    if language == "c":
        return [str(request.getfixturevalue("c_prefix") / "bin" / "gaspar2-request")]
    if language == "node":
        app = request.getfixturevalue("node_app")
        return [str(app / "node_modules" / ".bin" / "gaspar2-request")]
    if language == "perl":
        prefix = request.getfixturevalue("perl_prefix")
        return ["perl", "-I", str(prefix / "lib" / "perl5"),
                str(prefix / "bin" / "gaspar2-request")]
    return ["java", "-jar", str(request.getfixturevalue("java_jar"))]


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
    assert_echo(run([*cli, echo_server.url, "hello, gaspar2"]), b"hello, gaspar2")


def test_message_from_stdin_with_dash(cli, echo_server):
    assert_echo(run([*cli, echo_server.url, "-"], stdin=b"from stdin\n"), b"from stdin\n")


def test_binary_message_with_every_byte_value(cli, echo_server):
    payload = bytes(range(256)) * 16 + b"\0\0\r\n\0"
    assert_echo(run([*cli, echo_server.url], stdin=payload), payload)


def test_one_mebibyte(cli, echo_server):
    payload = random.Random(2).randbytes(1 << 20)
    assert_echo(run([*cli, echo_server.url], stdin=payload), payload)


def test_empty_message_gets_an_empty_reply(cli, echo_server):
    assert_echo(run([*cli, echo_server.url], stdin=b""), b"")
    assert_echo(run([*cli, echo_server.url, "-"], stdin=b""), b"")


def test_ipv6_address_in_brackets(cli, echo_server6):
    if echo_server6 is None:
        pytest.skip("no IPv6 loopback on this machine")
    assert_echo(run([*cli, "[::1]:%d" % echo_server6.port, "over IPv6"]), b"over IPv6")


def test_handler_error_is_reported_as_a_reset(cli, fail_server):
    assert_failed(run([*cli, fail_server.url, "boom"]), RESET)
    assert_failed(run([*cli, fail_server.url], stdin=b""), RESET)
    assert_failed(run([*cli, fail_server.url], stdin=bytes(1 << 20)), RESET)
    assert "ValueError: handler refuses" in fail_server.log()


def test_refused(cli):
    # A bound port that does not listen refuses connections, and no one else can take it.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        assert_failed(run([*cli, "127.0.0.1:%d" % closed.getsockname()[1], "anyone?"]), "refused")


def test_timeout(cli):
    # The kernel completes the connection, but nothing ever accepts it or replies.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = "127.0.0.1:%d" % silent.getsockname()[1]
        assert_failed(run([*cli, "--timeout", "0.5", url, "hello?"]), "timed out")


def test_usage_error(cli):
    done = run(cli)
    assert done.returncode == 2 and done.stdout == b""
    assert done.stderr.decode().startswith("usage: gaspar2-request")


# Each client's own test suite, against the live servers.

def passed_and_failed(output):
    """The counts of the closing "N passed, N failed" line."""
    found = re.search(r"^(\d+) passed, (\d+) failed$", output, re.M)
    assert found, output
    return int(found.group(1)), int(found.group(2))


def test_c_make_test(tree, c_prefix, test_env):
    passed, failed = passed_and_failed(ok(["make", "-C", tree / "c", "test"], env=test_env))
    assert failed == 0 and passed >= 10


def test_node_npm_test(tree, node_app, test_env, echo_server6):
    output = ok(["npm", "test"], cwd=tree / "node", env=test_env)
    counts = dict(re.findall(r"^# (\w+) (\d+)$", output, re.M))
    assert counts["fail"] == "0" and int(counts["pass"]) >= 9, output
    assert "# SKIP" not in output or not echo_server6, output


def test_perl_prove(tree, perl_prefix, test_env):
    need("prove")
    output = ok(["prove", "-l", "t"], cwd=tree / "perl", env=test_env)
    assert "Result: PASS" in output and "skipped" not in output, output


def test_java_make_test(tree, java_jar, test_env):
    passed, failed = passed_and_failed(ok(["make", "-C", tree / "java", "test"], env=test_env))
    assert failed == 0 and passed >= 8


# Packaging, per language.

def test_c_installs_headers_libraries_and_pkg_config(c_prefix, tmp_path):
    need("pkg-config")
    lib = c_prefix / "lib"
    assert (c_prefix / "include" / "gaspar2.h").is_file()
    assert (lib / "libgaspar2.a").is_file()
    assert os.readlink(lib / "libgaspar2.so") == "libgaspar2.so.0"
    assert os.readlink(lib / "libgaspar2.so.0") == "libgaspar2.so.%s" % VERSION
    if shutil.which("readelf"):
        assert "[libgaspar2.so.0]" in ok(["readelf", "-d", lib / ("libgaspar2.so.%s" % VERSION)])
    env = dict(os.environ, PKG_CONFIG_PATH=str(lib / "pkgconfig"), LD_LIBRARY_PATH=str(lib))
    assert ok(["pkg-config", "--modversion", "gaspar2"], env=env).strip() == VERSION
    flags = ok(["pkg-config", "--cflags", "--libs", "gaspar2"], env=env).split()

    (tmp_path / "version.c").write_text(
        '#include <stdio.h>\n#include <gaspar2.h>\n'
        'int main(void) { puts(GASPAR2_VERSION); return gaspar2_strerror(0) == NULL; }\n')
    # Linked against the shared library through pkg-config, then against the static one.
    ok(["cc", "-o", tmp_path / "shared", tmp_path / "version.c", *flags])
    ok(["cc", "-o", tmp_path / "static", tmp_path / "version.c", "-I", c_prefix / "include",
        lib / "libgaspar2.a"])
    for program in ["shared", "static"]:
        assert ok([tmp_path / program], env=env).strip() == VERSION


def test_node_package_contents(tree, node_app):
    files = {f["path"] for f in json.loads(
        ok(["npm", "pack", "--dry-run", "--json"], cwd=tree / "node"))[0]["files"]}
    assert files == {"package.json", "README.md", "index.d.ts", "gaspar2.js", "gaspar2-request.js"}
    with open(tree / "node" / "package.json") as f:
        package = json.load(f)
    assert package["exports"]["."]["types"] == "./index.d.ts"
    assert package["engines"]["node"] and package["scripts"]["test"]


TYPESCRIPT_USER = """\
import { request, RequestError, RequestOptions } from 'gaspar2';

const options: RequestOptions = { timeout: 5000, signal: AbortSignal.timeout(5000) };

export async function shout(text: string): Promise<string> {
  try {
    const reply: Buffer = await request('127.0.0.1:10123', text, options);
    return reply.toString().toUpperCase();
  } catch (err) {
    if ((err as RequestError).code === 'ECONNRESET') return 'failed on the server';
    throw err;
  }
}

// @ts-expect-error: the message must be bytes or a string
request('127.0.0.1:10123', 42);
"""


def test_node_types_under_strict_typescript(node_app, tmp_path_factory):
    """A TypeScript user's module type-checks under --strict with the package's own types
    (and would not with none: @ts-expect-error must find its error)."""
    tools = tmp_path_factory.mktemp("typescript")
    done = run(["npm", "install", "--no-audit", "--no-fund", "--prefix", tools, "typescript@5",
                "@types/node@20"], timeout=170)
    if done.returncode != 0:
        pytest.skip("cannot install typescript and @types/node from npm: %s"
                    % done.stderr.decode()[-300:])
    (node_app / "user.ts").write_text(TYPESCRIPT_USER)
    ok([tools / "node_modules" / ".bin" / "tsc", "--strict", "--noEmit", "--module", "nodenext",
        "--moduleResolution", "nodenext", "--target", "es2022", "--typeRoots",
        tools / "node_modules" / "@types", "--types", "node", "user.ts"], cwd=node_app)


def test_perl_distribution(tree, perl_prefix, test_env):
    need("podchecker")
    for path in ["lib/Net/Gaspar2.pm", "bin/gaspar2-request"]:
        assert "pod syntax OK" in ok(["podchecker", path], cwd=tree / "perl")
    output = ok(["make", "test"], cwd=tree / "perl", env=test_env)
    assert "Result: PASS" in output and "skipped" not in output, output
    assert ok(["make", "distcheck"], cwd=tree / "perl").count("Not in MANIFEST") == 0
    assert (perl_prefix / "lib" / "perl5" / "Net" / "Gaspar2.pm").is_file()


def test_java_javadoc_is_clean(tree, java_jar):
    need("javadoc")
    output = ok(["make", "-C", tree / "java", "javadoc"])
    assert "warning" not in output, output
    assert (tree / "java" / "build" / "javadoc" / "gaspar2" / "Gaspar2.html").is_file()


def test_every_client_has_the_python_package_version():
    def grep(path, pattern):
        with open(os.path.join(CLIENT, path)) as f:
            return re.search(pattern, f.read(), re.M).group(1)
    assert grep("c/gaspar2.h", r'^#define GASPAR2_VERSION "(.*)"') == VERSION
    number = int(grep("c/gaspar2.h", r"^#define GASPAR2_VERSION_NUMBER (0x[0-9a-f]+)"), 16)
    assert "%d.%d.%d" % (number >> 16, number >> 8 & 255, number & 255) == VERSION
    assert grep("node/package.json", r'"version": "(.*)"') == VERSION
    assert grep("perl/lib/Net/Gaspar2.pm", r"^our \$VERSION = '(.*)';") == VERSION
    assert grep("java/src/main/java/gaspar2/Gaspar2.java", r'String VERSION = "(.*)";') == VERSION


# client/README.rst: every example runs as written.

def readme_sections():
    """{section title: [(language, file name or None, code)]} for client/README.rst."""
    with open(os.path.join(CLIENT, "README.rst")) as f:
        lines = f.read().splitlines()
    sections, title, i = {}, None, 0
    while i < len(lines):
        if i + 1 < len(lines) and lines[i] and set(lines[i + 1]) == {"="} and \
                len(lines[i + 1]) == len(lines[i]):
            title = lines[i]
        found = re.match(r"\.\. code-block:: (\w+)$", lines[i])
        i += 1
        if not found:
            continue
        name = None
        while i < len(lines) and lines[i].startswith("   :"):
            name = re.match(r"   :name: (\S+)", lines[i]).group(1)
            i += 1
        body = []
        while i < len(lines) and (not lines[i] or lines[i].startswith("    ")):
            body.append(lines[i][4:])
            i += 1
        sections.setdefault(title, []).append(
            (found.group(1), name, "\n".join(body).strip() + "\n"))
    return sections


README = readme_sections()
TOOLS = {"C": ["cc", "make", "pkg-config"], "Node.js": ["node", "npm", "npx"],
         "Perl": ["perl", "make"], "Java": ["javac", "java", "make"]}


def test_readme_has_an_example_per_client():
    assert set(README) == set(TOOLS)
    for blocks in README.values():
        assert [lang for lang, _, _ in blocks].count("sh") == 1
        assert any(name for _, name, _ in blocks)


@pytest.mark.parametrize("section", sorted(TOOLS))
def test_readme_examples_run_as_written(section, app, echo_server, tmp_path):
    """The section's programs are saved under their names in the user's directory, then its
    shell commands run there, with a HOME of their own; only the server's port changes."""
    need(*TOOLS[section])
    script = ""
    for language, name, code in README[section]:
        code = code.replace("10123", str(echo_server.port))
        if language == "sh":
            script += code
        else:
            (app / name).write_text(code)
    env = dict(os.environ, HOME=str(tmp_path), npm_config_audit="false", npm_config_fund="false",
               npm_config_update_notifier="false")
    for variable in ["PKG_CONFIG_PATH", "LD_LIBRARY_PATH", "PERL5LIB"]:
        env.pop(variable, None)
    output = ok(["bash", "-euo", "pipefail", "-c", script], cwd=app, env=env, timeout=170)
    # The example program and the installed gaspar2-request each print the reply.
    assert output.count("hello") >= 2, output


# Unix sockets: every client reaches unix:PATH, and unix:@NAME where its language's standard
# library can; elsewhere it refuses the address with a clear error.

@pytest.fixture(scope="module")
def unix_server(tmp_path_factory):
    """tests.handlers:work on a unix socket's file and on an abstract name (and on TCP)."""
    directory = tmp_path_factory.mktemp("unix")
    name = "gaspar2-clients-%d-%d" % (os.getpid(), random.randrange(1 << 30))
    server = module_server(tmp_path_factory, "tests.handlers:work", "--workers", "2",
                           "--bind", "unix:%s" % (directory / "g.sock"), "--bind", "unix:@" + name)
    server.unix_url, server.abstract = "unix:%s" % (directory / "g.sock"), "unix:@" + name
    yield server
    server.stop()


def node_reaches_abstract():
    """Node.js 20.8 passes an abstract name's NUL on, and libuv 1.48 stops padding the name."""
    versions = ok(["node", "-p", "process.platform + ' ' + process.versions.node + ' ' + "
                   "process.versions.uv"]).split()
    def at_least(version, want):
        return tuple(map(int, version.split(".")[:2])) >= want
    return (versions[0] == "linux" and at_least(versions[1], (20, 8))
            and at_least(versions[2], (1, 48)))


def reaches_abstract(language):
    return {"c": True, "perl": True, "java": False}.get(language) or node_reaches_abstract()


# How each client's library reports a request: the reply on stdout, or "failed: KIND" (reset,
# refused, timeout, unsupported, or other, then the message) on stderr and exit 1.
C_PROBE = r"""#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <gaspar2.h>
int main(int argc, char **argv)
{
    unsigned char *reply;
    size_t len;
    const char *url = argv[1];
    int unix_socket = strncmp(url, "unix:", 5) == 0;
    char host[256] = "", *port = NULL;
    if (!unix_socket) {
        strcpy(host, url);
        port = strrchr(host, ':');
        *port++ = '\0';
    }
    int rc = gaspar2_request(unix_socket ? url : host, port, argv[2], strlen(argv[2]), &reply,
                             &len, atoi(argv[3]));
    if (rc == GASPAR2_OK) {
        fwrite(reply, 1, len, stdout);
        free(reply);
        return 0;
    }
    fprintf(stderr, "failed: %s: %s\n", rc == GASPAR2_ERESET ? "reset"
            : rc == GASPAR2_EREFUSED ? "refused" : rc == GASPAR2_ETIMEOUT ? "timeout" : "other",
            gaspar2_strerror(rc));
    return 1;
}
"""

NODE_PROBE = """const { request } = require('gaspar2');
const kinds = {
  ECONNRESET: 'reset', ECONNREFUSED: 'refused', ETIMEDOUT: 'timeout', ENOTSUP: 'unsupported',
};
const [url, message, timeout] = process.argv.slice(2);
request(url, message, { timeout: Number(timeout) }).then(
  (reply) => process.stdout.write(reply),
  (err) => {
    process.stderr.write(`failed: ${kinds[err.code] || 'other'}: ${err.message}\n`);
    process.exitCode = 1;
  },
);
"""

PERL_PROBE = r"""use strict;
use warnings;
use Net::Gaspar2 qw(request);
my ($url, $message, $timeout) = @ARGV;
my $reply = eval { request($url, $message, timeout => $timeout / 1000) };
if (!defined $reply) {
    my $kind = $@ =~ /connection reset/ ? 'reset' : $@ =~ /connection refused/ ? 'refused'
        : $@ =~ /timed out/ ? 'timeout' : 'other';
    print STDERR "failed: $kind: $@";
    exit 1;
}
binmode STDOUT;
print $reply;
"""

JAVA_PROBE = """import gaspar2.Gaspar2;

public class Probe {
    public static void main(String[] args) throws Exception {
        String kind;
        Exception error;
        try {
            System.out.write(Gaspar2.request(args[0], args[1], Integer.parseInt(args[2])));
            System.out.flush();
            return;
        } catch (Gaspar2.RequestFailed e) {
            kind = "reset";
            error = e;
        } catch (java.net.ConnectException e) {
            kind = "refused";
            error = e;
        } catch (java.net.SocketTimeoutException e) {
            kind = "timeout";
            error = e;
        } catch (UnsupportedOperationException e) {
            kind = "unsupported";
            error = e;
        } catch (Exception e) {
            kind = "other";
            error = e;
        }
        System.err.println("failed: " + kind + ": " + error.getMessage());
        System.exit(1);
    }
}
"""


@pytest.fixture(scope="module", params=LANGUAGES)
def library(request, tmp_path_factory):
    """(language, argv of a program that sends argv[1] to the address argv[0] through the
    language's library, with a timeout of argv[2] ms)."""
    language = request.param
    work = tmp_path_factory.mktemp("probe-" + language)
    if language == "c":
        prefix = request.getfixturevalue("c_prefix")
        (work / "probe.c").write_text(C_PROBE)
        ok(["cc", "-Wall", "-Werror", "-o", work / "probe", work / "probe.c", "-I",
            prefix / "include", prefix / "lib" / "libgaspar2.a"])
        return language, [str(work / "probe")]
    if language == "node":
        app = request.getfixturevalue("node_app")
        (app / "unix-probe.js").write_text(NODE_PROBE)
        return language, ["node", str(app / "unix-probe.js")]
    if language == "perl":
        prefix = request.getfixturevalue("perl_prefix")
        (work / "probe.pl").write_text(PERL_PROBE)
        return language, ["perl", "-I", str(prefix / "lib" / "perl5"), str(work / "probe.pl")]
    jar = str(request.getfixturevalue("java_jar"))
    (work / "Probe.java").write_text(JAVA_PROBE)
    ok(["javac", "-cp", jar, "-d", work, work / "Probe.java"])
    return language, ["java", "-cp", "%s:%s" % (jar, work), "Probe"]


def language_of(request):
    return request.node.callspec.params["cli"]


def probe(library, url, message, timeout_ms=30000):
    return run([*library[1], url, message, str(timeout_ms)])


def assert_probe_failed(done, kind):
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 1 and done.stdout == b"", err
    assert err.startswith("failed: %s: " % kind), err
    return err


def each_gets_its_own(argvs):
    """Run every (argv, expected reply) at once; each must print its own reply."""
    procs = [(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE), expected)
             for argv, expected in argvs]
    for proc, expected in procs:
        out, err = proc.communicate(timeout=120)
        assert (proc.returncode, err) == (0, b""), err.decode("utf-8", "replace")
        assert out == expected


def bodies(language, via, url, count=4):
    tag = "%08x" % random.randrange(1 << 32)
    return ["%s %s #%d %s over %s" % (language, via, n, tag, url) for n in range(count)]


def test_unix_path_from_library(library, unix_server):
    language, argv = library
    url = unix_server.unix_url
    each_gets_its_own([([*argv, url, body, "30000"], body.encode())
                       for body in bodies(language, "library", url)])
    assert probe(library, url, "").stdout == b""
    assert_probe_failed(probe(library, url, "fail"), "reset")


def test_unix_path_from_cli(cli, unix_server, request):
    url = unix_server.unix_url
    each_gets_its_own([([*cli, url, body], body.encode())
                       for body in bodies(language_of(request), "gaspar2-request", url)])
    payload = random.Random(3).randbytes(1 << 20)
    assert_echo(run([*cli, url], stdin=payload), payload)
    assert_failed(run([*cli, url, "fail"]), RESET)


def test_abstract_name_from_library(library, unix_server):
    language, argv = library
    url = unix_server.abstract
    if not reaches_abstract(language):
        err = assert_probe_failed(probe(library, url, "hello"), "unsupported")
        assert "abstract" in err and "unix:@NAME" in err, err
        return
    each_gets_its_own([([*argv, url, body, "30000"], body.encode())
                       for body in bodies(language, "library", url)])
    assert_probe_failed(probe(library, url, "fail"), "reset")


def test_abstract_name_from_cli(cli, unix_server, request):
    language, url = language_of(request), unix_server.abstract
    if not reaches_abstract(language):
        assert_failed(run([*cli, url, "hello"]), "abstract unix socket names (unix:@NAME)")
        return
    each_gets_its_own([([*cli, url, body], body.encode())
                       for body in bodies(language, "gaspar2-request", url)])
    assert_failed(run([*cli, url, "fail"]), RESET)


def refusing_addresses(tmp_path, stale):
    """A unix socket's file that is not there, and one nobody listens on (``stale``, bound,
    never listening): both refuse."""
    stale.bind(str(tmp_path / "stale.sock"))
    return ["unix:%s" % (tmp_path / "none.sock"), "unix:%s" % (tmp_path / "stale.sock")]


def nobody_listens():
    return "unix:@gaspar2-nobody-%d-%d" % (os.getpid(), random.randrange(1 << 30))


def test_missing_unix_socket_is_refused_by_library(library, tmp_path):
    with socket.socket(socket.AF_UNIX) as stale:
        for url in refusing_addresses(tmp_path, stale):
            assert_probe_failed(probe(library, url, "anyone?"), "refused")
    if reaches_abstract(library[0]):
        assert_probe_failed(probe(library, nobody_listens(), "anyone?"), "refused")


def test_missing_unix_socket_is_refused_by_cli(cli, tmp_path, request):
    with socket.socket(socket.AF_UNIX) as stale:
        for url in refusing_addresses(tmp_path, stale):
            assert_failed(run([*cli, url, "anyone?"]), "refused")
    if reaches_abstract(language_of(request)):
        assert_failed(run([*cli, nobody_listens(), "anyone?"]), "refused")


def silent_unix_socket(tmp_path, silent):
    """The kernel completes the connection, but nothing ever accepts it or replies."""
    silent.bind(str(tmp_path / "silent.sock"))
    silent.listen(8)
    return "unix:%s" % (tmp_path / "silent.sock")


def test_unix_timeout_in_library(library, tmp_path):
    with socket.socket(socket.AF_UNIX) as silent:
        url = silent_unix_socket(tmp_path, silent)
        assert_probe_failed(probe(library, url, "hello?", 500), "timeout")


def test_unix_timeout_in_cli(cli, tmp_path):
    with socket.socket(socket.AF_UNIX) as silent:
        url = silent_unix_socket(tmp_path, silent)
        assert_failed(run([*cli, "--timeout", "0.5", url, "hello?"]), "timed out")


# Last: the builds above, each with its defaults, wrote only what git ignores.

def test_builds_leave_the_checkout_clean(request, app, tree):
    need("git")
    for build in ["c_prefix", "node_app", "perl_prefix", "java_jar"]:
        try:
            request.getfixturevalue(build)
        except pytest.skip.Exception:
            pass
    if shutil.which("make"):
        run(["make", "-C", tree / "c"])
    checkout = app / "gaspar2"
    if not (checkout / ".git").exists():
        ok(["git", "init", "-q"], cwd=checkout)
        shutil.copy2(os.path.join(ROOT, ".gitignore"), checkout / ".gitignore")
    status = ok(["git", "status", "--porcelain", "--untracked-files=all"], cwd=checkout)
    sources = {"?? " + p for p in source_files()} | {"?? .gitignore"}
    left = [line for line in status.splitlines() if line not in sources]
    assert not left, "builds left files that git does not ignore:\n" + "\n".join(left)
