"""A TCP forwarder a test can cut, or stall and resume, to make a peer unreachable on purpose.

Cutting closes the connections (the peer sees a reset at once); stalling keeps them open and silently
stops carrying bytes, as a failed network path does: nothing tells either side until its own timeouts.
Stalling the replies only holds what the target sends back while the client's requests still arrive: the target
acts on a request whose answer the client never gets (as when a server dies between its commit and its reply).
With source_host, the connections to the target leave from that address (e.g. 127.0.0.2): the target sees
another client machine. grpcio has no public channel option to pick a source address, so a channel to the
proxy is how a test speaks gRPC from one.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, source_host: str | None = None) -> None:
        self.target = (target_host, target_port)
        self.source = None if source_host is None else (source_host, 0)
        self.server: asyncio.Server | None = None
        self.port = 0
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        # Bytes from the client to the target, and from the target back to the client.
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._replying = asyncio.Event()
        self._replying.set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for writer in list(self._writers):
            writer.close()
        for task in list(self._pipes):
            task.cancel()

    def stall(self, *, replies_only: bool = False) -> None:
        """Stop carrying bytes on every connection, open or new, without closing any; replies_only: only those the
        target sends back (the client's still arrive)."""
        self._replying.clear()
        if not replies_only:
            self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()
        self._replying.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)  # closed by cut() even while the connection waits for a stall to end
        await self._flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target, local_addr=self.source)
        except OSError:
            writer.close()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        for src, dst, flowing in ((reader, up_writer, self._flowing), (up_reader, writer, self._replying)):
            task = asyncio.create_task(self._pipe(src, dst, flowing))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, flowing: asyncio.Event) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    await flowing.wait()  # a stalled path holds what it read
                    dst.write(data)
                    await dst.drain()
            # ... and the end of the connection: a peer that gives up on a stalled path and closes its socket is
            # not heard of on the other side until the path flows again (as on a network, where its FIN is lost
            # too), so e.g. Redis does not drop a blocked read of a client that left during a stall.
            await flowing.wait()
        dst.close()
        self._writers.discard(dst)
