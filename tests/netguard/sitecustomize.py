"""Network guard for the offline tests (loaded by every Python process started with this folder on
PYTHONPATH): any connection or name lookup outside this machine (loopback, its own interface
addresses, the unspecified address) fails, and is recorded in $TBD_NETGUARD_LOG."""

import ipaddress
import os
import socket

_LOG = os.environ.get("TBD_NETGUARD_LOG")
_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def _own_addresses() -> set[str]:
    """This machine's interface addresses (Ray binds and connects to the node's own IP)."""
    try:
        import psutil

        return {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    except Exception:
        return set()


_OWN = _own_addresses()


def _local(host) -> bool:
    if host in (None, "", "localhost") or isinstance(host, bytes | int):
        return True
    host = str(host).split("%")[0]
    if host in _OWN:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


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
