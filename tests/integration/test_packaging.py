"""The Python distribution: what the sdist and the wheel hold, tests that run from the
unpacked sdist, and types that mypy --strict accepts in a user's module."""

import email
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

import gaspar2

from conftest import ROOT

pytestmark = pytest.mark.timeout(300)

PYTHONS = ["3.11", "3.12", "3.13"]


def run(argv, timeout=240, **kwargs):
    done = subprocess.run(argv, capture_output=True, timeout=timeout, **kwargs)
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    assert done.returncode == 0, "%s failed:\n%s" % (" ".join(map(str, argv)), output)
    return output


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The sdist, and the wheel built from it, as ``python -m build`` makes them."""
    out = tmp_path_factory.mktemp("dist")
    # No isolation: setuptools and wheel come with the test extra, so nothing is downloaded.
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT])
    sdist, = out.glob("gaspar2-*.tar.gz")
    wheel, = out.glob("gaspar2-*.whl")
    return sdist, wheel


def project_files(*folders):
    """The files git tracks (or would) under ``folders``; None outside a git checkout."""
    if not (shutil.which("git") and os.path.exists(os.path.join(ROOT, ".git"))):
        return None
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", *folders],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {path for path in listed.splitlines() if os.path.isfile(os.path.join(ROOT, path))}


def test_sdist_holds_the_whole_project(dist):
    sdist, _ = dist
    top = sdist.name[:-len(".tar.gz")] + "/"
    with tarfile.open(sdist) as archive:
        names = {name[len(top):] for name in archive.getnames() if archive.getmember(name).isfile()}
    for required in ["LICENSE", "CHANGELOG.rst", "README.rst", "pyproject.toml", "setup.cfg",
                     "gaspar2/py.typed", "gaspar2/client.py", "tests/conftest.py",
                     "tests/handlers.py", "tests/integration/test_clients.py", "scripts/check",
                     "gaspar2/producer/path.py", "client/README.rst",
                     "client/c/Makefile", "client/node/package.json", "client/perl/Makefile.PL",
                     "client/java/Makefile", "benchmarks/run.py", "docs/deploy/gaspar2.service"]:
        assert required in names, required
    tracked = project_files("gaspar2", "tests", "client", "benchmarks", "docs", "scripts")
    if tracked is not None:
        assert tracked <= names, sorted(tracked - names)
    built = [n for n in names if "/build/" in n or "__pycache__" in n or n.endswith((".pyc", ".o"))]
    assert not built, built


def test_wheel_holds_the_package_typed_and_licensed(dist):
    _, wheel = dist
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(archive.read(info))
    assert "gaspar2/py.typed" in names and "gaspar2/client.py" in names
    assert "gaspar2/producer/path.py" in names and "gaspar2/protocol/wire.py" in names
    assert any(n.endswith(".dist-info/LICENSE") or "/licenses/LICENSE" in n for n in names)
    assert not any(n.startswith(("tests/", "client/", "benchmarks/")) for n in names)
    assert metadata["Version"] == gaspar2.__version__
    assert metadata["License"] == "MIT"
    assert metadata["Keywords"]
    classifiers = metadata.get_all("Classifier")
    for python in PYTHONS:
        assert "Programming Language :: Python :: %s" % python in classifiers
    assert "Typing :: Typed" in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)


def test_tests_run_from_the_unpacked_sdist(dist, tmp_path):
    sdist, _ = dist
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path, filter="data")
    unpacked = tmp_path / sdist.name[:-len(".tar.gz")]
    # A quick part of the suite: the framing tests against a real server, started from the
    # sdist's own package, and the Python client's.
    output = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                  "tests/integration/test_framing.py", "tests/integration/test_python_client.py"],
                 cwd=unpacked)
    assert " passed" in output and "failed" not in output and "error" not in output, output


# mypy --strict on a user's module, with gaspar2 installed from the wheel into a virtualenv
# of its own: mypy must find the package's types there through its py.typed marker.

@pytest.fixture(scope="module")
def wheel_python(dist, tmp_path_factory):
    """A virtualenv's python with the wheel unpacked into its site-packages."""
    pytest.importorskip("mypy")
    venv = tmp_path_factory.mktemp("typed") / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    with zipfile.ZipFile(dist[1]) as archive:
        archive.extractall(purelib.strip())
    return python


CLIENT_USER = """\
import asyncio
import concurrent.futures

from gaspar2 import client


def fetch(url: str) -> bytes:
    try:
        return client.request(url, "hello", timeout=5)
    except client.RequestRefused:
        return client.request(url.replace("10123", "10124"), b"hello")
    except (client.RequestReset, client.RequestTimeout) as exc:
        raise RuntimeError("no reply") from exc
    except client.RequestFailed:
        raise


async def afetch(url: str) -> bytes:
    return await client.arequest(url, bytearray(b"hello"), timeout=5.0)


def fetch_many(url: str, messages: list[bytes]) -> list[bytes]:
    with client.Executor(url, max_workers=4, timeout=5) as executor:
        future: concurrent.futures.Future[bytes] = executor.submit(messages[0])
        return [future.result(), *executor.map(messages[1:], timeout=30)]


def address(url: str) -> tuple[str, int]:
    return client.parse_url(url)


print(asyncio.run(afetch("127.0.0.1:10123")))
"""

SERVER_USER = """\
import gaspar2
from gaspar2 import client


def shout(message: bytes) -> bytes:
    return message.upper()


class Upper(gaspar2.Consumer):
    def setup(self) -> None:
        self.prefix = b">"

    def handle(self, message: bytes) -> bytes:
        return self.prefix + message.upper()


def serve(port: int) -> tuple[str, int]:
    producer = gaspar2.Producer(Upper(), port, processes=2)
    producer.start(blocking=False)
    gaspar2.Producer(gaspar2.Consumer(handler=shout), 0).stop(timeout=1.0)
    return producer.address


frame: bytes = client.pack("hello")
"""


def mypy_strict(source, python, tmp_path):
    (tmp_path / "user.py").write_text(source)
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--python-executable", python,
                           "--cache-dir", tmp_path / "cache", "user.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=240)
    return done.returncode, done.stdout + done.stderr


def test_mypy_strict_accepts_a_client_user(wheel_python, tmp_path):
    code, output = mypy_strict(CLIENT_USER, wheel_python, tmp_path)
    assert code == 0 and "Success" in output, output


def test_mypy_strict_accepts_a_server_user(wheel_python, tmp_path):
    code, output = mypy_strict(SERVER_USER, wheel_python, tmp_path)
    assert code == 0, output
