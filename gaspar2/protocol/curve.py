"""CURVE keys and the ZAP authenticator, shared by the producer and remote workers."""

from __future__ import annotations

import logging
import os

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("gaspar2.remote")


class KeyRing:
    """The public keys one end accepts from the other (a ZAP credentials provider)."""

    def __init__(self, public_keys: list[bytes], what: str):
        self.keys = set(public_keys)
        self.what = what

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        log.warning("refused a %s with an unknown CURVE key %s", self.what, key.decode())
        return False


def generate_keys(directory: str, name: str) -> tuple[str, str]:
    """Write NAME.key (public, to hand out) and NAME.key_secret into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    public, secret = zmq.auth.create_certificates(directory, name)
    return str(public), str(secret)


def load_secret(path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a .key_secret file."""
    public, secret = zmq.auth.load_certificate(path)
    if secret is None:
        raise ValueError("%s holds no secret key" % path)
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
