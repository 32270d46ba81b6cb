#!/usr/bin/env python3
"""An independent HTTP/2 CONNECT peer for the pooled transport's interoperability tests:
Debian's python3-h2 over mutual TLS (Python's ssl; ALPN meshtls-h2 or h2), never meshtls'
own code.

  h2_peer.py client HOST PORT CERT KEY CA AUTHORITY...  one CONNECT per authority, at once:
      prints "status AUTHORITY CODE" for each (RESET:<code> when the stream is reset instead);
      on a 200 it sends "ping AUTHORITY\\n", half-closes (END_STREAM), and prints
      "echo AUTHORITY ok" when exactly that came back followed by END_STREAM.
  h2_peer.py h2only HOST PORT CERT KEY CA  a TLS client offering ALPN h2 alone, as an app's
      own HTTP/2 client would: prints "alpn SELECTED" (None when none was), then sends a line
      and prints "echo ok" when it comes back unchanged.
  h2_peer.py server PORT CERT KEY CA  accepts one connection after another, answers every
      CONNECT 200 and echoes its bytes, ending the stream when the client does; prints
      "listening PORT" once bound and "connect AUTHORITY" per request.
  h2_peer.py drain HOST PORT CERT KEY CA AUTHORITY ACK  a client that watches how a server
      ends a connection, frame by frame (python3-h2's state machine ends a connection at its
      first GOAWAY, so this mode and the next frame HTTP/2 themselves, with h2's HPACK): opens
      one CONNECT stream, prints "established" at its 200, then "goaway LAST_STREAM_ID" and
      "ping" as they arrive (answering PINGs only when ACK is "ack"); after a GOAWAY that names
      a real stream it ends the stream and prints "ended" at the server's END_STREAM, then
      "closed" at EOF.
  h2_peer.py early HOST PORT CERT KEY CA AUTHORITY  one CONNECT whose bytes and END_STREAM
      follow its HEADERS at once, before any answer: prints "status CODE", then "echo ok" when
      exactly those bytes came back with END_STREAM ("reset CODE" if the stream was reset).

Every wait is bounded (10 s of silence ends the client with an error).
"""

import socket
import ssl
import sys

import struct

import h2.config
import h2.connection
import h2.events
import hpack


def tls_context(server, cert, key, ca):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.check_hostname = False  # SPIFFE identities are URI SANs, not host names
    ctx.verify_mode = ssl.CERT_REQUIRED
    # A client offers meshtls' own id first (any meshtls inbound port takes it), then h2 (the
    # pooled port, and other HTTP/2 servers); this server takes h2.
    ctx.set_alpn_protocols(["h2"] if server else ["meshtls-h2", "h2"])
    return ctx


def client(host, port, cert, key, ca, authorities):
    sock = tls_context(False, cert, key, ca).wrap_socket(
        socket.create_connection((host, int(port)), timeout=10))
    if sock.selected_alpn_protocol() not in ("meshtls-h2", "h2"):
        sys.exit(f"ALPN: the server selected {sock.selected_alpn_protocol()!r}")
    # python3-h2 4.1 requires :path of every request it sends or receives, CONNECT's included,
    # against RFC 9113 §8.5: its header validation is off, the rest of its state machine on.
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding="utf-8", validate_outbound_headers=False,
        normalize_outbound_headers=False))
    conn.initiate_connection()
    streams = {}
    for authority in authorities:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "CONNECT"), (":authority", authority)])
        streams[sid] = {"authority": authority, "echo": b"", "done": False}
    sock.sendall(conn.data_to_send())
    pending = len(streams)
    while pending > 0:
        data = sock.recv(65536)  # socket timeout: 10 s of silence fails
        if not data:
            sys.exit("the server closed the connection")
        for event in conn.receive_data(data):
            sid = getattr(event, "stream_id", None)
            s = streams.get(sid)
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers)[":status"]
                print(f"status {s['authority']} {status}", flush=True)
                if status == "200":
                    s["sent"] = f"ping {s['authority']}\n".encode()
                    conn.send_data(sid, s["sent"], end_stream=True)
                else:
                    s["done"] = True
                    pending -= 1
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, sid)
                s["echo"] += event.data
            elif isinstance(event, h2.events.StreamEnded) and s and not s["done"]:
                s["done"] = True
                pending -= 1
                if s["echo"] == s.get("sent"):
                    print(f"echo {s['authority']} ok", flush=True)
                else:
                    print(f"echo {s['authority']} bad {s['echo']!r}", flush=True)
            elif isinstance(event, h2.events.StreamReset) and s and not s["done"]:
                s["done"] = True
                pending -= 1
                print(f"status {s['authority']} RESET:{int(event.error_code)}", flush=True)
            elif isinstance(event, h2.events.ConnectionTerminated):
                sys.exit(f"GOAWAY from the server: {event.error_code}")
        sock.sendall(conn.data_to_send())
    conn.close_connection()
    sock.sendall(conn.data_to_send())
    sock.close()


def h2only(host, port, cert, key, ca):
    ctx = tls_context(False, cert, key, ca)
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=10))
    print(f"alpn {sock.selected_alpn_protocol()}", flush=True)
    line = b"not a sidecar\n"
    sock.sendall(line)
    got = b""
    while len(got) < len(line):
        data = sock.recv(65536)
        if not data:
            break
        got += data
    print("echo ok" if got == line else f"echo bad {got!r}", flush=True)


def server(port, cert, key, ca):
    ctx = tls_context(True, cert, key, ca)
    listener = socket.create_server(("127.0.0.1", int(port)))
    print(f"listening {listener.getsockname()[1]}", flush=True)
    while True:
        raw, _ = listener.accept()
        try:
            sock = ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as e:
            print(f"handshake failed {e}", flush=True)
            continue
        # A client may end its connection at any point (an idle or drained pooled connection
        # closes): that ends the connection, never the server.
        try:
            serve(sock)
        except (ssl.SSLError, OSError) as e:
            print(f"connection ended {e}", flush=True)
        finally:
            sock.close()


def serve(sock):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding="utf-8", validate_inbound_headers=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                headers = dict(event.headers)
                print(f"connect {headers.get(':authority')}", flush=True)
                conn.send_headers(event.stream_id, [(":status", "200")])
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                conn.send_data(event.stream_id, event.data)
            elif isinstance(event, h2.events.StreamEnded):
                conn.end_stream(event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                sock.sendall(conn.data_to_send())
                sock.close()
                return
        sock.sendall(conn.data_to_send())


class RawH2:
    """HTTP/2 framing by hand over mutual TLS (python3-h2's HPACK encoder only), for what
    python3-h2's state machine does not allow: frames after a GOAWAY, DATA before the 200."""

    def __init__(self, host, port, cert, key, ca):
        self.sock = tls_context(False, cert, key, ca).wrap_socket(
            socket.create_connection((host, int(port)), timeout=10))
        self.buffered = b""
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        self.send(0x4, 0, 0)  # SETTINGS, empty

    def send(self, kind, flags, stream, payload=b""):
        self.sock.sendall(struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) +
                          struct.pack(">I", stream) + payload)

    def connect(self, stream, authority):
        block = hpack.Encoder().encode([(":method", "CONNECT"), (":authority", authority)])
        self.send(0x1, 0x4, stream, block)  # HEADERS, END_HEADERS

    def _read_exactly(self, n):
        while len(self.buffered) < n:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buffered += data
        out, self.buffered = self.buffered[:n], self.buffered[n:]
        return out

    def frames(self):
        """Yields (type, flags, stream, payload) until EOF; answers SETTINGS itself."""
        while True:
            header = self._read_exactly(9)
            payload = None if header is None else self._read_exactly(
                int.from_bytes(header[:3], "big"))
            if payload is None:
                return
            kind, flags = header[3], header[4]
            stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
            if kind == 0x4 and not flags & 0x1:
                self.send(0x4, 0x1, 0)  # SETTINGS ACK
                continue
            yield kind, flags, stream, payload


def drain(host, port, cert, key, ca, authority, ack):
    conn = RawH2(host, port, cert, key, ca)
    conn.connect(1, authority)
    ended = False
    for kind, flags, stream, payload in conn.frames():
        if kind == 0x1 and stream == 1:
            print("established", flush=True)
        elif kind == 0x6 and not flags & 0x1:
            print("ping", flush=True)
            if ack == "ack":
                conn.send(0x6, 0x1, 0, payload)
        elif kind == 0x7:
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            print(f"goaway {last}", flush=True)
            if last < 0x7FFFFFFF and not ended:
                conn.send(0x0, 0x1, 1)  # DATA, END_STREAM: the stream is done
        elif kind == 0x0 and stream == 1 and flags & 0x1:
            ended = True
            print("ended", flush=True)
        elif kind == 0x3 and stream == 1:
            print(f"reset {int.from_bytes(payload[:4], 'big')}", flush=True)
    print("closed", flush=True)


def early(host, port, cert, key, ca, authority):
    conn = RawH2(host, port, cert, key, ca)
    conn.connect(1, authority)
    line = b"sent before the answer\n"
    conn.send(0x0, 0x1, 1, line)  # DATA with END_STREAM, before any 200
    echo = b""
    for kind, flags, stream, payload in conn.frames():
        if kind == 0x1 and stream == 1:
            status = hpack.Decoder().decode(payload)
            print(f"status {dict(status).get(':status')}", flush=True)
        elif kind == 0x0 and stream == 1:
            echo += payload
            if flags & 0x1:
                print("echo ok" if echo == line else f"echo bad {echo!r}", flush=True)
                return
        elif kind == 0x3 and stream == 1:
            print(f"reset {int.from_bytes(payload[:4], 'big')}", flush=True)
            return
    print("closed", flush=True)


if __name__ == "__main__":
    if len(sys.argv) >= 8 and sys.argv[1] == "client":
        client(*sys.argv[2:7], sys.argv[7:])
    elif len(sys.argv) == 7 and sys.argv[1] == "h2only":
        h2only(*sys.argv[2:7])
    elif len(sys.argv) == 6 and sys.argv[1] == "server":
        server(*sys.argv[2:6])
    elif len(sys.argv) == 9 and sys.argv[1] == "drain":
        drain(*sys.argv[2:9])
    elif len(sys.argv) == 8 and sys.argv[1] == "early":
        early(*sys.argv[2:8])
    else:
        sys.exit(__doc__)
