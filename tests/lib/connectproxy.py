"""A minimal HTTP CONNECT proxy on 127.0.0.1, for tests of clients that reach
HTTPS servers through HTTPS_PROXY.

Each client connection may open one tunnel (``CONNECT host:port``); the proxy
connects to that address (127.0.0.1 only: it is a test fixture, not an open
relay), answers 200 and then copies bytes both ways until either side closes.
It never looks inside the tunnel, so TLS (and its ALPN) is negotiated between
the client and the server, as through a real forward proxy.  ``tunnels`` lists
the "host:port" of every tunnel opened, in order.

    with ConnectProxy() as proxy:
        env = {"HTTPS_PROXY": proxy.url, "NO_PROXY": ""}
        ...
        assert proxy.tunnels
"""

import select
import socket
import threading

_HEAD_MAX = 16 * 1024


class ConnectProxy:
    def __init__(self):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.tunnels = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []
        self._loop = threading.Thread(target=self._accept, daemon=True)
        self._loop.start()

    def _accept(self):
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def _serve(self, client):
        upstream = None
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < _HEAD_MAX:
                piece = client.recv(4096)
                if not piece:
                    return
                head += piece
            line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(line) != 3 or line[0] != "CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            host, _, port = line[1].rpartition(":")
            if host not in ("127.0.0.1", "localhost"):
                client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            upstream = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
            with self._lock:
                self.tunnels.append(line[1])
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._pump(client, upstream, head.split(b"\r\n\r\n", 1)[1])
        except OSError:
            pass
        finally:
            client.close()
            if upstream is not None:
                upstream.close()

    def _pump(self, client, upstream, early):
        if early:
            upstream.sendall(early)
        peers = {client: upstream, upstream: client}
        while not self._stop.is_set():
            readable, _, _ = select.select(list(peers), [], [], 0.1)
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                peers[sock].sendall(data)

    def stop(self):
        self._stop.set()
        self._loop.join(5)
        self._sock.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
