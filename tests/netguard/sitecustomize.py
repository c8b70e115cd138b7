"""Network guard for the offline tests (loaded by every Python process started with this folder on
PYTHONPATH): any connection or name lookup outside loopback fails, and is recorded in $TBD_NETGUARD_LOG."""

import ipaddress
import os
import socket

_LOG = os.environ.get("TBD_NETGUARD_LOG")
_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def _local(host) -> bool:
    if host in (None, "", "localhost") or isinstance(host, bytes | int):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _deny(what: str):
    if _LOG:
        with open(_LOG, "a") as fh:
            fh.write(f"{os.getpid()} {what}\n")
    raise OSError(f"network access blocked by the offline test guard: {what}")


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        _deny(f"connect {address}")
    return _connect(self, address)


def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        _deny(f"connect_ex {address}")
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    if not _local(host):
        _deny(f"getaddrinfo {host}")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
