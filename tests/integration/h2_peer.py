#!/usr/bin/env python3
"""An independent HTTP/2 CONNECT peer for the pooled transport's interoperability tests:
Debian's python3-h2 over mutual TLS (Python's ssl, ALPN h2), never meshtls' own code.

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
      first GOAWAY, so this speaks HTTP/2 with h2's HPACK encoder and its own framing): opens
      one CONNECT stream, prints "established" at its 200, then "goaway LAST_STREAM_ID" and
      "ping" as they arrive (answering PINGs only when ACK is "ack"); after a GOAWAY that names
      a real stream it ends the stream and prints "ended" at the server's END_STREAM, then
      "closed" at EOF.

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


def drain(host, port, cert, key, ca, authority, ack):
    sock = tls_context(False, cert, key, ca).wrap_socket(
        socket.create_connection((host, int(port)), timeout=10))

    def frame(kind, flags, stream, payload=b""):
        sock.sendall(struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) +
                     struct.pack(">I", stream) + payload)

    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    frame(0x4, 0, 0)  # SETTINGS, empty
    block = hpack.Encoder().encode([(":method", "CONNECT"), (":authority", authority)])
    frame(0x1, 0x4, 1, block)  # HEADERS, END_HEADERS, stream 1
    buffered = b""

    def read_exactly(n):
        nonlocal buffered
        while len(buffered) < n:
            data = sock.recv(65536)
            if not data:
                return None
            buffered += data
        out, buffered = buffered[:n], buffered[n:]
        return out

    ended = False
    while True:
        header = read_exactly(9)
        if header is None:
            print("closed", flush=True)
            return
        length = int.from_bytes(header[:3], "big")
        kind, flags = header[3], header[4]
        stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
        payload = read_exactly(length)
        if payload is None:
            print("closed", flush=True)
            return
        if kind == 0x4 and not flags & 0x1:
            frame(0x4, 0x1, 0)  # SETTINGS ACK
        elif kind == 0x1 and stream == 1:
            print("established", flush=True)
        elif kind == 0x6 and not flags & 0x1:
            print("ping", flush=True)
            if ack == "ack":
                frame(0x6, 0x1, 0, payload)
        elif kind == 0x7:
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            print(f"goaway {last}", flush=True)
            if last < 0x7FFFFFFF and not ended:
                frame(0x0, 0x1, 1)  # DATA, END_STREAM: the stream is done
        elif kind == 0x0 and stream == 1 and flags & 0x1:
            ended = True
            print("ended", flush=True)
        elif kind == 0x3 and stream == 1:
            print(f"reset {int.from_bytes(payload[:4], 'big')}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) >= 8 and sys.argv[1] == "client":
        client(*sys.argv[2:7], sys.argv[7:])
    elif len(sys.argv) == 7 and sys.argv[1] == "h2only":
        h2only(*sys.argv[2:7])
    elif len(sys.argv) == 6 and sys.argv[1] == "server":
        server(*sys.argv[2:6])
    elif len(sys.argv) == 9 and sys.argv[1] == "drain":
        drain(*sys.argv[2:9])
    else:
        sys.exit(__doc__)
