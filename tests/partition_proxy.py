"""Network partitions for tests on the real stack: loopback TCP proxies that stall a link and resume it.

A stalled link keeps both of its sockets open and stops carrying bytes in both directions (tests/tcp_proxy.py):
neither end is killed or told, as when a network path fails between two machines that both keep running.
The processes under test are pointed at the proxy's port instead of their peer's.

The proxies run on an event loop of their own, in a thread: they keep forwarding while the test's loop is
blocked (a stack starting up, a synchronous call), and a process started from the test reaches its peer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from tests.tcp_proxy import TcpProxy

T = TypeVar("T")
# How long a call into the proxies' thread may take (they only flip a flag or open a listener).
CALL_TIMEOUT_S = 10.0


class Link:
    """One proxied link: its peers talk through `address`; `stall()` hangs it, `resume()` lets it flow again."""

    def __init__(self, proxies: PartitionProxies, proxy: TcpProxy, name: str) -> None:
        self._proxies = proxies
        self._proxy = proxy
        self.name = name

    @property
    def port(self) -> int:
        return self._proxy.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, url: str) -> str:
        """url (postgresql://, redis://) with its host and port replaced by this proxy's, credentials kept."""
        parts = urlsplit(url)
        credentials, _, _ = parts.netloc.rpartition("@")
        netloc = f"{credentials}@{self.address}" if credentials else self.address
        return urlunsplit(parts._replace(netloc=netloc))

    def stall(self) -> None:
        self._proxies.call(_run(self._proxy.stall))

    def resume(self) -> None:
        self._proxies.call(_run(self._proxy.resume))


async def _run(action: Callable[[], None]) -> None:
    action()


class PartitionProxies:
    """Proxies that live on one background event loop; `close()` drops every connection and ends the thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="partition-proxies", daemon=True)
        self._thread.start()
        self.links: list[Link] = []

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=CALL_TIMEOUT_S)

    def link(self, name: str, host: str, port: int) -> Link:
        """A new proxy listening on a free loopback port and forwarding to host:port."""
        proxy = TcpProxy(host, port)
        self.call(proxy.start())
        link = Link(self, proxy, name)
        self.links.append(link)
        return link

    def link_to_url(self, name: str, url: str) -> Link:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None, url
        return self.link(name, parts.hostname, parts.port)

    def resume_all(self) -> None:
        for link in self.links:
            link.resume()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self.call(self._shut([link._proxy for link in self.links]))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=CALL_TIMEOUT_S)
        self._loop.close()

    @staticmethod
    async def _shut(proxies: list[TcpProxy]) -> None:
        """Drop every connection, and wait for every forwarding task to end (none is left pending)."""
        for proxy in proxies:
            proxy.resume()  # a pipe waiting on a stall ends on its cancellation either way
            await proxy.cut()
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def __enter__(self) -> PartitionProxies:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
