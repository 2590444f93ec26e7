"""A TCP relay on loopback whose link can be cut and restored, to take a real server "away".

Killing moto would also wipe its memory, so that nothing could be checked afterwards (were the
multipart uploads aborted?). The relay is the network between the worker and storage instead:
`cut()` closes the listening port and resets every open connection, as a storage endpoint that
went down does; `restore()` listens again on the same port. The server behind it, and what it
stores, stay real and untouched.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from .procs import LOOPBACK


class NetCut:
    def __init__(self, target_port: int) -> None:
        self.target = (LOOPBACK, target_port)
        probe = socket.socket()
        probe.bind((LOOPBACK, 0))
        self.port = int(probe.getsockname()[1])
        probe.close()
        self.endpoint_url = f"http://{LOOPBACK}:{self.port}"
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):  # RST, as a peer that vanished
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def close(self) -> None:
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns.discard(src)
            src.close()
