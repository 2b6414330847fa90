"""CURVE keys and the ZAP authenticator, shared by the producer and remote workers.

A secret key is written readable by its owner alone, and one that others could read is
refused when loaded, as ssh refuses a private key: a key others have read is no secret, and
a refusal with the fix in it costs less than a leak nobody notices.
"""

from __future__ import annotations

import datetime
import logging
import os
import stat
import time

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("gaspar2.remote")


class KeyRing:
    """The public keys one end accepts from the other (a ZAP credentials provider). Anyone
    who reaches the endpoint can offer keys: refusals are logged once a second at most,
    with a count, and the key quoted escaped."""

    def __init__(self, public_keys: list[bytes], what: str):
        self.keys = set(public_keys)
        self.what = what
        self.refused = 0
        self.logged = -1.0

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        self.refused += 1
        now = time.monotonic()
        if self.logged < 0 or now - self.logged >= 1.0:
            self.logged = now
            log.warning("refused a %s with an unknown CURVE key %r (%d refused so far)",
                        self.what, bytes(key[:64]), self.refused)
        return False


class KeyFileError(OSError):
    """A key file that cannot or must not be used as it is; the message says why, and how to
    mend it."""


def generate_keys(directory: str, name: str) -> tuple[str, str]:
    """Write NAME.key (public, to hand out) and NAME.key_secret (mode 0600) into
    ``directory``, in ZeroMQ's certificate format; an existing pair is replaced."""
    os.makedirs(directory, exist_ok=True)
    public_key, secret_key = zmq.curve_keypair()
    public = os.path.join(directory, name + ".key")
    secret = public + "_secret"
    write_key_file(public, "Public", public_key, None, 0o644)
    write_key_file(secret, "**Secret**", public_key, secret_key, 0o600)
    return public, secret


def write_key_file(path: str, kind: str, public_key: bytes, secret_key: bytes | None,
                   mode: int) -> None:
    """Write a certificate whole, under a temporary name created with ``mode`` (less what
    the umask removes: a secret is never readable by others, not even for a moment), then
    renamed over ``path``."""
    lines = ["#   ****  Generated on %s by gaspar2 keys  ****" % datetime.datetime.now(
                 datetime.UTC).isoformat(timespec="seconds"),
             "#   ZeroMQ CURVE %s Certificate" % kind]
    if secret_key is not None:
        lines.append("#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.")
    lines += ["", "metadata", "curve", '    public-key = "%s"' % public_key.decode("ascii")]
    if secret_key is not None:
        lines.append('    secret-key = "%s"' % secret_key.decode("ascii"))
    temporary = "%s.%d.tmp" % (path, os.getpid())
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def check_private(path: str, mode: int) -> None:
    """KeyFileError unless ``mode`` (a secret key file's) keeps group and others out."""
    if mode & 0o077:
        raise KeyFileError(
            "the secret key %s is not private: its mode %04o lets others (group or other "
            "users) read or change it; refusing it, as ssh refuses such a private key. Make "
            "it the owner's alone: chmod 600 %s (and, if others could read it, make a new "
            "pair with 'gaspar2 keys': the old one may be known)"
            % (path, stat.S_IMODE(mode), path))


def load_secret(path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a .key_secret file that only its owner can read."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise KeyFileError("cannot read the secret key %s: %s" % (path, exc.strerror)) from exc
    check_private(path, st.st_mode)
    try:
        public, secret = zmq.auth.load_certificate(path)
    except ValueError as exc:
        raise KeyFileError("%s is not a key file: %s" % (path, exc)) from exc
    if secret is None:
        raise KeyFileError("%s holds no secret key" % path)
    return public, secret


def load_public_keys(path: str) -> list[bytes]:
    """Public keys from a .key file or from every .key file in a directory."""
    paths = [path]
    if os.path.isdir(path):
        paths = [os.path.join(path, n) for n in sorted(os.listdir(path)) if n.endswith(".key")]
    return [zmq.auth.load_certificate(p)[0] for p in paths]


def start_authenticator(ctx: zmq.SyncContext, keyring: KeyRing) -> ThreadAuthenticator:
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("gaspar2.zap"))
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=keyring)
    return auth


def make_client(sock: zmq.SyncSocket, keys: tuple[bytes, bytes] | None,
                server_key: bytes | None) -> None:
    """Make ``sock`` a CURVE client of ``server_key`` with ``keys``, when keys are in use."""
    if keys is not None:
        sock.curve_publickey, sock.curve_secretkey = keys
        sock.curve_serverkey = server_key


def make_server(sock: zmq.SyncSocket, keys: tuple[bytes, bytes] | None) -> None:
    if keys is not None:
        sock.curve_server = True
        sock.curve_publickey, sock.curve_secretkey = keys
