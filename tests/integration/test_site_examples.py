"""The documentation's programs and commands run as they are written: the tutorial's, step
by step, its output compared; each how-to's; the README's example; and the Grafana dashboard
queries only metrics, and labels, that a running server exposes. Only ports change, to free
ones, and names that stand for the reader's own (``myapp:handle``, hosts) become real ones.
Programs are read from the pages themselves, or from the files in docs/examples/ that the
pages include."""

import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from gaspar2 import client

from conftest import ROOT, Server, environment, module_server, wait_for

pytestmark = pytest.mark.timeout(120)

DOCS = pathlib.Path(ROOT) / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import gaspar2_tables as tables  # noqa: E402  (from the path just added)

BIN = os.path.dirname(sys.executable)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def blocks(page):
    """[(kind, language, caption, text)] of a page: ``code-block`` and ``literalinclude``
    directives (the text of an include is its file's), and ``::`` literal blocks."""
    lines = (DOCS / page).read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        line = lines[i]
        directive = re.match(r"^\s*\.\. (code-block|literalinclude):: (\S+)$", line)
        literal = line.rstrip().endswith("::") and not line.lstrip().startswith("..")
        i += 1
        if not (directive or literal):
            continue
        options = {}
        while directive and i < len(lines) and re.match(r"^\s+:(\w+):", lines[i]):
            key, _, value = lines[i].strip()[1:].partition(":")
            options[key] = value.strip()
            i += 1
        body = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
            body.append(lines[i])
            i += 1
        text = "\n".join(body)
        indent = min((len(x) - len(x.lstrip()) for x in body if x.strip()), default=0)
        text = "\n".join(x[indent:] for x in body).strip() + "\n"
        if directive and directive.group(1) == "literalinclude":
            path = DOCS / directive.group(2).lstrip("/")
            found.append(("include", options.get("language"), options.get("caption"),
                          path.read_text()))
        elif directive:
            found.append(("code", directive.group(2), options.get("caption"), text))
        elif text.strip():
            found.append(("literal", None, None, text))
    return found


# Every block of the tutorial and the how-tos that is a program or a command, and the test
# that runs it; the others are configuration files (checked by test_docs.py where they are
# deployment recipes) or output.
RUNNABLE = {"python", "perl", "console", "sh"}
RUN_BY = {
    "tutorial.rst": "test_the_tutorial_runs_as_written",
    "howto/embedding.rst": "test_cli_api.py and test_embedding_threads.py",
    "howto/systemd.rst": "test_docs.py (the config file, with the units)",
    "howto/calling.rst": "test_the_calling_examples_run",
    "howto/large-payloads.rst": "test_the_large_payload_examples_run",
    "howto/remote-workers.rst": "test_the_remote_workers_commands_run",
}


def test_every_program_and_command_of_the_tutorial_and_the_how_tos_is_run():
    pages = ["tutorial.rst", *sorted("howto/" + p.name for p in (DOCS / "howto").glob("*.rst"))]
    for page in pages:
        for kind, language, caption, text in blocks(page):
            assert kind != "literal", "%s: a literal block, use a code-block: %r" % (page, text)
            if language in RUNNABLE:
                assert page in RUN_BY, "%s: a %s block no test runs: %r" % (page, language,
                                                                           caption or text)


def tutorial_steps():
    """The tutorial's files, and its commands with the output each should print."""
    files, commands = {}, []
    for _, language, caption, text in blocks("tutorial.rst"):
        if language == "console":
            for line in text.splitlines():
                if line.startswith("$ "):
                    commands.append([line[2:], []])
                else:
                    commands[-1][1].append(line)
        elif language in RUNNABLE:
            files[caption] = text
    return files, commands


def shell(command, cwd, env):
    return subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def test_the_tutorial_runs_as_written(tmp_path):
    files, commands = tutorial_steps()
    assert set(files) == {"digest.py", "call_gevent.py", "call_asyncio.py", "call.pl"}
    ports = {"10123": str(free_port()), "9123": str(free_port())}

    def local(text):
        for port, free in ports.items():
            text = text.replace(port, free)
        return text
    for name, text in files.items():
        (tmp_path / name).write_text(local(text))
    env = environment()
    env["PATH"] = BIN + os.pathsep + env["PATH"]
    servers = []
    try:
        for command, expected in commands:
            if command.startswith("pip install"):
                continue        # installed already: CI runs the README's own install first
            if command.startswith("perl ") and not shutil.which("perl"):
                continue
            if command.endswith(" &"):     # serving on the default address: a free port
                server = Server(None, (), tmp_path / "server.log", cwd=tmp_path,
                                env=dict(env, GASPAR2_CMD_ARGS="--port " + ports["10123"]),
                                cmd=shlex.split(local(command[:-2])))
                servers.append(server.wait_serving())
                continue
            done = shell(local(command), tmp_path, env)
            assert done.returncode == 0, (command, done.stderr)
            assert done.stdout.splitlines() == expected, (command, done.stdout, done.stderr)
        assert len(servers) == 1
        servers[0].signal(signal.SIGTERM)       # "Stop the server"
        assert servers[0].wait_exit() == 0
    finally:
        for server in servers:
            server.stop()


def readme_example():
    text = (pathlib.Path(ROOT) / "README.rst").read_text()
    start = text.index("    import gaspar2\n")
    end = text.index("\n\n", text.index("    # elsewhere:", start))
    return "\n".join(line[4:] for line in text[start:end].splitlines()) + "\n"


def test_the_readme_example_answers_as_it_says(tmp_path):
    source = readme_example()
    (tmp_path / "app.py").write_text(source)
    assert "gaspar2 serve app:Upper" in (pathlib.Path(ROOT) / "README.rst").read_text()
    claimed = re.search(r'request\("127.0.0.1:10123", (b".*?")\) == (b".*?")$', source, re.M)
    message, reply = eval(claimed.group(1)), eval(claimed.group(2))
    done = subprocess.run([os.path.join(BIN, "gaspar2"), "check", "app:Upper", "--request",
                           message.decode()], cwd=tmp_path, capture_output=True,
                          env=environment(), timeout=60)
    assert (done.returncode, done.stdout) == (0, reply), done.stderr


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory):
    """An echo server with metrics, for the calling examples and then the dashboard."""
    metrics = "127.0.0.1:%d" % free_port()
    server = module_server(tmp_path_factory, "gaspar2.examples:echo", "--workers", "2",
                           "--metrics", metrics)
    server.metrics = metrics
    yield server
    server.stop()


def example(name):
    return (DOCS / "examples" / name).read_text()


def test_the_calling_examples_run(echo_server, tmp_path):
    server = echo_server
    outputs = {}
    for name in ("asyncio_client.py", "executor.py"):
        (tmp_path / name).write_text(example(name).replace("10123", str(server.port)))
        done = subprocess.run([sys.executable, name], cwd=tmp_path, capture_output=True,
                              text=True, env=environment(), timeout=60)
        assert done.returncode == 0, done.stderr
        outputs[name] = done.stdout.splitlines()
    assert outputs["asyncio_client.py"] == ["100 replies, the last: job 99"]
    assert sorted(outputs["executor.py"]) == sorted("%d b'%d'" % (n, n) for n in range(100))


def test_the_large_payload_examples_run(tmp_path):
    ((_, _, _, command), (_, _, caption, program)) = blocks("howto/large-payloads.rst")
    assert command.startswith("gaspar2 serve myapp:handle") and caption == "checksum.py"
    done = subprocess.run([os.path.join(BIN, "gaspar2"), *shlex.split(command)[1:],
                           "--print-config"], capture_output=True, text=True, cwd=tmp_path,
                          env=environment(), timeout=60)
    assert done.returncode == 0, done.stderr
    values = {}
    exec(done.stdout, {}, values)
    assert (values["max_message_size"], values["shm_size"]) == (256 << 20, 2 << 30)
    (tmp_path / caption).write_text(program)
    done = subprocess.run([sys.executable, caption], cwd=tmp_path, capture_output=True,
                          text=True, env=environment(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"[0-9a-f]{8}\n", done.stdout), done.stdout


def test_the_remote_workers_commands_run(tmp_path):
    """The keys are made as written; the copy the comment asks for is done; the producer and
    the worker group run on this machine, on loopback, with one worker."""
    ((_, _, _, script),) = [b for b in blocks("howto/remote-workers.rst")
                                   if b[1] == "sh"]
    commands = [" ".join(c.replace("\\\n", " ").split()) for c in
                re.split(r"\n(?=gaspar2 |#)", script.strip())]
    commands = [c.split("  #")[0].strip() for c in commands if not c.startswith("#")]
    keys = [c for c in commands if c.startswith("gaspar2 keys")]
    (serve_line,) = [c for c in commands if c.startswith("gaspar2 serve")]
    (worker_line,) = [c for c in commands if c.startswith("gaspar2 worker")]
    env = environment()
    env["PATH"] = BIN + os.pathsep + env["PATH"]
    for command in keys:
        done = shell(command, tmp_path, env)
        assert done.returncode == 0, done.stderr
    (tmp_path / "keys" / "workers").mkdir()
    shutil.copy(tmp_path / "workers-keys" / "host2.key", tmp_path / "keys" / "workers")
    shutil.copy(tmp_path / "keys" / "producer.key", tmp_path)
    port, remote = free_port(), free_port()
    serve_argv = shlex.split(serve_line.replace("myapp:handle", "gaspar2.examples:echo")
                             .replace("--host 0.0.0.0", "--host 127.0.0.1 --port %d" % port)
                             .replace("0.0.0.0:10124", "127.0.0.1:%d" % remote))
    worker_argv = shlex.split(worker_line.replace("myapp:handle", "gaspar2.examples:echo")
                              .replace("producer-host:10124", "127.0.0.1:%d" % remote)
                              .replace("--workers 8", "--workers 1"))
    producer = Server(None, (), tmp_path / "producer.log", env=env, cwd=tmp_path,
                      cmd=[*serve_argv, "--workers", "1"])
    group = subprocess.Popen([*worker_argv, "--listen", "127.0.0.1"], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        producer.wait_serving()
        producer.wait_log(r"remote .* joined from tcp://127\.0\.0\.1:", timeout=60)
        url = "127.0.0.1:%d" % port
        replies = {client.request(url, b"n%d" % n, timeout=30) for n in range(40)}
        assert replies == {b"n%d" % n for n in range(40)}
    finally:
        group.send_signal(signal.SIGTERM)
        group.wait(30)
        producer.stop()


# -- the Grafana dashboard ---------------------------------------------------------------------

ADDED_BY_PROMETHEUS = {"instance", "job"}   # target labels, not in /metrics


def dashboard_queries():
    dashboard = json.loads((DOCS / "deploy" / "grafana-dashboard.json").read_text())
    queries = [(panel["title"], target["expr"]) for panel in dashboard["panels"]
               for target in panel["targets"]]
    variables = [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return dashboard, queries + [("variables", v) for v in variables]


def used(expr):
    """{metric: labels the query uses on it}: in its matchers, and in ``by (...)``."""
    found = {}
    for name, matchers in re.findall(r"\b(gaspar2_\w+)(\{[^}]*\})?", expr):
        found.setdefault(name, set()).update(re.findall(r"(\w+)\s*=~?", matchers))
    for labels in re.findall(r"\bby \(([^)]*)\)", expr):
        for name in found:
            found[name].update(label.strip() for label in labels.split(","))
    found.update({m: found[m] for m in re.findall(r"label_values\((gaspar2_\w+)", expr)})
    return found


def test_the_dashboard_queries_what_a_running_server_exposes(echo_server):
    from prometheus_client.parser import text_string_to_metric_families

    server, metrics = echo_server, echo_server.metrics
    server.signal(signal.SIGHUP)            # a reload: worker exits, with their cause
    server.wait_log("leaves|replaced|retir|exit", timeout=60)

    def scrape():
        with urllib.request.urlopen("http://%s/metrics" % metrics, timeout=10) as reply:
            return reply.read().decode()

    def exited():
        return "gaspar2_worker_exits_total{" in scrape()
    wait_for(exited, timeout=60, interval=0.1, message="a worker exit counted")
    exposed, families = {}, set()
    for family in text_string_to_metric_families(scrape()):
        families.add(family.name + "_total" if family.type == "counter" else family.name)
        for sample in family.samples:
            exposed.setdefault(sample.name, set()).update(sample.labels)
    dashboard, queries = dashboard_queries()
    assert len(dashboard["panels"]) == 8
    queried = set()
    for title, expr in queries:
        for name, labels in used(expr).items():
            queried.add(name)
            assert name in exposed, "%s: %s is not in /metrics" % (title, name)
            missing = labels - exposed[name] - ADDED_BY_PROMETHEUS
            assert not missing, "%s: %s has no label %s" % (title, name, missing)
    for wanted in ("gaspar2_requests_total", "gaspar2_request_seconds_bucket",
                   "gaspar2_requests_waiting", "gaspar2_requests_at_workers", "gaspar2_workers",
                   "gaspar2_connections", "gaspar2_buffered_bytes", "gaspar2_dropped_messages",
                   "gaspar2_worker_exits_total"):
        assert wanted in queried, wanted
    # and the reference lists every metric the server exposes
    documented = {m.name for m in tables.metric_definitions()}
    ours = {f for f in families if f.startswith("gaspar2_") and not f.endswith("_created")}
    assert ours == documented       # prometheus-client's own _created series aside


def test_the_dashboard_is_importable_as_it_is():
    dashboard, queries = dashboard_queries()
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    source = "${%s}" % dashboard["__inputs"][0]["name"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == source
        assert all(t["datasource"]["uid"] == source for t in panel["targets"])
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(set(ids)) == len(ids) and queries
