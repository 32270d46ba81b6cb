#!/usr/bin/env python3
"""meshtls beside HAProxy, nginx (stream) and stunnel, measured the same way in one run.

Every proxy runs as a pair (an outbound proxy that originates mutual TLS 1.3 and an inbound
proxy that terminates it, each with one worker) between wrk/curl and a plain HTTP backend, all
on loopback. Rows: keep-alive requests/s and latency, full and resumed handshakes/s (for
meshtls also with the outbound `connect:` a DNS name served by a DNS server on loopback), one
bulk stream, RSS per idle connection, and proxy CPU per request and per handshake; plus the
ceiling from `openssl speed`. Each figure is repeated --reps times; the table shows the median, then
every repetition, and meshtls / best peer. Run through scripts/bench.sh, which installs the
peers and builds meshtls in Release mode.

Only loopback addresses are bound, every load is bounded in time (wrk -d, curl -m) or count,
and every process started here is stopped on exit.
"""

import argparse
import datetime
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

TRUST_DOMAIN = "bench.meshtls.local"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/client"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/server"
RESPONSE_BODY = b"x" * 63 + b"\n"  # the 64-byte response of the request rows
BULK_BYTES = 100 * 1024 * 1024
IDLE_CONNECTIONS = 2000
WRK_CONNECTIONS = 32
CLK_TCK = os.sysconf("SC_CLK_TCK")
DNS_NAME = "upstream.bench.test"  # the DNS row's `connect:` name, served by DnsResponder
DNS_TTL = 5


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def serves(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2.0) as r:
            return r.read() == RESPONSE_BODY
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Test PKI: one ECDSA P-256 root, a client and a server leaf (SPIFFE URI SAN, plus DNS:localhost
# so the peers' host name checks have a name to check).


def make_pki(d):
    def openssl(*args):
        run(["openssl", *args], cwd=d)

    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
    openssl("req", "-x509", "-new", "-key", "ca.key", "-days", "2", "-subj", "/CN=bench root",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", "ca.pem")
    for name, spiffe in (("client", CLIENT_ID), ("server", SERVER_ID)):
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", f"{name}.key")
        openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={name}", "-out",
                f"{name}.csr")
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\n"
                    "keyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=serverAuth,clientAuth\n"
                    f"subjectAltName=URI:{spiffe},DNS:localhost\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "1", "-sha256", "-extfile", f"{name}.ext",
                "-out", f"{name}.pem")
        with open(os.path.join(d, f"{name}.combined.pem"), "w") as out:
            for part in (f"{name}.pem", f"{name}.key"):
                with open(os.path.join(d, part)) as f:
                    out.write(f.read())


# ---------------------------------------------------------------------------------------------
# Processes


class Proc:
    """One started process; stop() ends it and every process it spawned."""

    all = []

    def __init__(self, name, cmd, workdir, env=None):
        self.name = name
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.p = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True, cwd=workdir)
        Proc.all.append(self)

    def pids(self):
        """The process and all its descendants."""
        children = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        out, todo = [], [self.p.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, []))
        return out

    def cpu_seconds(self):
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime + stime
            except OSError:
                pass
        return total / CLK_TCK

    def rss_kib(self):
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total

    def check_alive(self):
        if self.p.poll() is not None:
            self.log.flush()
            with open(self.log_path) as f:
                tail = f.read()[-2000:]
            raise RuntimeError(f"{self.name} exited with {self.p.returncode}:\n{tail}")

    def stop(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.log.close()
        if self in Proc.all:
            Proc.all.remove(self)

    @classmethod
    def stop_all(cls):
        for p in list(cls.all):
            p.stop()


def start_backend(d):
    """nginx serving the 64-byte response at / and 100 MiB at /bulk, keep-alive forever."""
    port = free_port()
    www = os.path.join(d, "www")
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, "bulk"), "wb") as f:
        chunk = os.urandom(1024 * 1024)
        for _ in range(BULK_BYTES // len(chunk)):
            f.write(chunk)
    conf = os.path.join(d, "backend.conf")
    with open(conf, "w") as f:
        f.write(f"""
daemon off; master_process off; worker_processes 1; pid {d}/backend.pid;
error_log {d}/backend.error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  keepalive_requests 10000000; keepalive_timeout 600s;
  sendfile on;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = / {{ default_type text/plain; return 200 "{RESPONSE_BODY.decode().strip()}\\n"; }}
    location = /bulk {{ root {www}; }}
  }}
}}
""")
    os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
    p = Proc("backend", ["nginx", "-c", conf, "-e", f"{d}/backend.error.log"], d)
    wait_until("the backend", lambda: serves(port))
    return p, port


class Pair:
    """An outbound + inbound proxy pair of one product, between a client and the backend."""

    def __init__(self, name, out_proc, in_proc, port):
        self.name = name
        self.procs = [p for p in (out_proc, in_proc) if p is not None]
        self.port = port  # where the client connects (the outbound proxy's plain listener)

    def cpu_seconds(self):
        return sum(p.cpu_seconds() for p in self.procs)

    def rss_kib(self):
        return sum(p.rss_kib() for p in self.procs)

    def check_alive(self):
        for p in self.procs:
            p.check_alive()

    def stop(self):
        for p in self.procs:
            p.stop()


def start_pair(d, tag, out_port, ext, configs, argv):
    """Writes the inbound and outbound proxy's config files ({"in": text, "out": text}) and
    starts both; argv(role, conf_path) is the command line."""
    procs = {}
    for role, text in configs.items():
        conf = os.path.join(d, f"{tag}-{role}.{ext}")
        with open(conf, "w") as f:
            f.write(text)
        procs[role] = Proc(f"{tag}-{role}", argv(role, conf), d)
    return Pair(tag, procs["out"], procs["in"], out_port)


class DnsResponder:
    """A DNS server on 127.0.0.1 (UDP) for the DNS row: answers A queries for `name` with
    127.0.0.1 and `ttl`, AAAA with no record, anything else with NXDOMAIN; counts queries."""

    def __init__(self, name, ttl):
        self.name, self.ttl, self.queries = name.lower(), ttl, 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stopping:
            try:
                query, peer = self.sock.recvfrom(1500)
            except socket.timeout:
                continue
            if len(query) < 17:
                continue
            labels, at = [], 12
            while at < len(query) and query[at] != 0:
                n = query[at]
                labels.append(query[at + 1:at + 1 + n].decode(errors="replace"))
                at += 1 + n
            qtype = int.from_bytes(query[at + 1:at + 3], "big")
            question = query[12:at + 5]
            self.queries += 1
            known = ".".join(labels).lower() == self.name
            flags = 0x8000 | (int.from_bytes(query[2:4], "big") & 0x7900) | 0x80 | (0 if known else 3)
            answers = b""
            if known and qtype == 1:
                answers = (b"\xc0\x0c" + (1).to_bytes(2, "big") + (1).to_bytes(2, "big") +
                           self.ttl.to_bytes(4, "big") + (4).to_bytes(2, "big") +
                           socket.inet_aton("127.0.0.1"))
            header = (query[0:2] + flags.to_bytes(2, "big") + (1).to_bytes(2, "big") +
                      (1 if answers else 0).to_bytes(2, "big") + bytes(4))
            self.sock.sendto(header + question + answers, peer)

    def stop(self):
        self.stopping = True
        self.thread.join()
        self.sock.close()


def start_meshtls(d, tag, backend_port, pki, sidecar, resumption, workers, dns=None):
    """A meshtls pair; with `dns` (a DnsResponder), the outbound side connects to its name,
    resolved through it, instead of to 127.0.0.1."""
    in_port, out_port = free_port(), free_port()
    connect_host = dns.name if dns else "127.0.0.1"
    dns_section = f'dns: {{servers: ["127.0.0.1:{dns.port}"]}}\n' if dns else ""

    def config(cert, listener):
        return f"""trust_domain: {TRUST_DOMAIN}
identity:
  files: {{cert: {pki}/{cert}.pem, key: {pki}/{cert}.key, trust_bundle: {pki}/ca.pem}}
{listener}admin: {{listen: 127.0.0.1:{free_port()}}}
workers: {workers}
tls: {{session_resumption: {"true" if resumption else "false"}}}
limits: {{max_connections: 20000}}
log: {{level: warning}}
"""

    return start_pair(d, tag, out_port, "yaml", {
        "in": config("server", f"""inbound:
  - name: bench
    listen: 127.0.0.1:{in_port}
    forward: 127.0.0.1:{backend_port}
    allow: [{CLIENT_ID}]
"""),
        "out": config("client", f"""outbound:
  - name: bench
    listen: 127.0.0.1:{out_port}
    connect: {connect_host}:{in_port}
    expect: [{SERVER_ID}]
{dns_section}"""),
    }, lambda role, conf: [sidecar, "--config", conf])


def start_haproxy(d, tag, backend_port, pki, resumption):
    in_port, out_port = free_port(), free_port()
    reuse = "" if resumption else " no-ssl-reuse"
    tickets = "" if resumption else " no-tls-tickets"
    cache = "" if resumption else "  tune.ssl.cachesize 0\n"
    header = f"""global
  nbthread 1
  maxconn 9000
{cache}defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
"""
    return start_pair(d, tag, out_port, "cfg", {
        "in": header + f"""frontend fin
  bind 127.0.0.1:{in_port} ssl crt {pki}/server.combined.pem ca-file {pki}/ca.pem verify required ssl-min-ver TLSv1.3 curves X25519{tickets}
  default_backend bin
backend bin
  server app 127.0.0.1:{backend_port}
""",
        "out": header + f"""frontend fout
  bind 127.0.0.1:{out_port}
  default_backend bout
backend bout
  server peer 127.0.0.1:{in_port} ssl crt {pki}/client.combined.pem ca-file {pki}/ca.pem verify required verifyhost localhost ssl-min-ver TLSv1.3{reuse}
""",
    }, lambda role, conf: ["haproxy", "-db", "-f", conf])


def start_nginx(d, tag, backend_port, pki, resumption):
    in_port, out_port = free_port(), free_port()
    onoff = "on" if resumption else "off"
    cache = "ssl_session_cache shared:s:10m;" if resumption else ""

    def config(role, server):
        return f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off; worker_processes 1; pid {d}/{tag}-{role}.pid;
error_log {d}/{tag}-{role}.error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16384; }}
stream {{
  {server}
}}
"""

    return start_pair(d, tag, out_port, "conf", {
        "in": config("in", f"""server {{
    listen 127.0.0.1:{in_port} ssl backlog=4096;
    ssl_certificate {pki}/server.pem; ssl_certificate_key {pki}/server.key;
    ssl_client_certificate {pki}/ca.pem; ssl_verify_client on; ssl_verify_depth 2;
    ssl_protocols TLSv1.3; ssl_ecdh_curve X25519;
    ssl_session_tickets {onoff}; {cache}
    proxy_pass 127.0.0.1:{backend_port};
  }}"""),
        "out": config("out", f"""server {{
    listen 127.0.0.1:{out_port} backlog=4096;
    proxy_pass 127.0.0.1:{in_port};
    proxy_ssl on; proxy_ssl_protocols TLSv1.3;
    proxy_ssl_certificate {pki}/client.pem; proxy_ssl_certificate_key {pki}/client.key;
    proxy_ssl_trusted_certificate {pki}/ca.pem; proxy_ssl_verify on;
    proxy_ssl_verify_depth 2; proxy_ssl_name localhost;
    proxy_ssl_session_reuse {onoff};
  }}"""),
    }, lambda role, conf: ["nginx", "-c", conf, "-e", f"{d}/{tag}-{role}.error.log"])


def start_stunnel(d, tag, backend_port, pki, resumption):
    in_port, out_port = free_port(), free_port()
    header = "foreground = yes\npid =\ndebug = 3\nsslVersionMin = TLSv1.3\n"
    return start_pair(d, tag, out_port, "conf", {
        "in": header + f"""[in]
accept = 127.0.0.1:{in_port}
connect = 127.0.0.1:{backend_port}
cert = {pki}/server.pem
key = {pki}/server.key
CAfile = {pki}/ca.pem
verifyChain = yes
requireCert = yes
curves = X25519
{"" if resumption else "options = NO_TICKET"}
""",
        "out": header + f"""[out]
client = yes
accept = 127.0.0.1:{out_port}
connect = 127.0.0.1:{in_port}
cert = {pki}/client.pem
key = {pki}/client.key
CAfile = {pki}/ca.pem
verifyChain = yes
checkHost = localhost
sessionResume = {"yes" if resumption else "no"}
""",
    }, lambda role, conf: ["stunnel4", conf])


# ---------------------------------------------------------------------------------------------
# Loads


def parse_duration_us(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if m is None:
        raise RuntimeError(f"cannot read the wrk latency {text!r}")
    scale = {"us": 1, "ms": 1e3, "s": 1e6, "m": 60e6}[m.group(2)]
    return float(m.group(1)) * scale


def wrk(port, seconds, close):
    cmd = ["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = run(cmd + [f"http://127.0.0.1:{port}/"], timeout=seconds + 30)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    if total == 0 or not re.search(r"99%\s+[\d.]+(us|ms|s|m)\b", out):
        raise RuntimeError(f"wrk completed no request on port {port}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    try:
        p50 = parse_duration_us(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
        p99 = parse_duration_us(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    except RuntimeError as e:
        raise RuntimeError(f"{e}; wrk printed:\n{out}") from None
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx or (errors and total > 0 and sum(map(int, re.findall(r"\d+", errors.group(1))))
                  > total // 100):
        raise RuntimeError(f"wrk saw errors on port {port}:\n{out}")
    if total == 0:
        raise RuntimeError(f"wrk completed no request on port {port}:\n{out}")
    return {"rps": rps, "p50": p50, "p99": p99, "requests": total}


def bulk(port):
    out = run(["curl", "-s", "-m", "120", "-o", "/dev/null", "-w",
               "%{size_download} %{time_total}", f"http://127.0.0.1:{port}/bulk"], timeout=130)
    size, seconds = out.split()
    if int(size) != BULK_BYTES:
        raise RuntimeError(f"bulk transfer on port {port} got {size} bytes, want {BULK_BYTES}")
    return BULK_BYTES / (1024 * 1024) / float(seconds)


def hold_idle_connections(port, count, deadline_s=60.0):
    """Opens `count` keep-alive connections, completes one request on each (so every hop of the
    pair is connected and handshaken), and returns the open sockets."""
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    sockets = []
    deadline = time.monotonic() + deadline_s
    batch = 100
    while len(sockets) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(sockets)} of {count} idle connections came up")
        sel = selectors.DefaultSelector()
        pending = {}
        for _ in range(min(batch, count - len(sockets))):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(request)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            pending[s] = b""
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError("idle connections: responses did not arrive in time")
            for key, _ in sel.select(timeout=1.0):
                s = key.fileobj
                data = s.recv(4096)
                if not data:
                    raise RuntimeError("idle connections: the proxy closed a connection")
                pending[s] += data
                if pending[s].endswith(RESPONSE_BODY):
                    sel.unregister(s)
                    del pending[s]
                    sockets.append(s)
        sel.close()
    return sockets


# ---------------------------------------------------------------------------------------------
# openssl speed: the crypto ceiling


def openssl_speed(seconds):
    out = run(["openssl", "speed", "-seconds", str(seconds), "ecdsap256", "ecdhx25519"],
              timeout=120)
    # The per-second columns: the seconds columns are rounded to 0.0000s.
    m = re.search(r"256 bits ecdsa \(nistp256\)\s+\S+\s+\S+\s+([\d.]+)\s+([\d.]+)", out)
    sign_us, verify_us = 1e6 / float(m.group(1)), 1e6 / float(m.group(2))
    m = re.search(r"253 bits ecdh \(X25519\)\s+\S+\s+([\d.]+)", out)
    x25519_us = 1e6 / float(m.group(1))
    out = run(["openssl", "speed", "-seconds", str(seconds), "-bytes", "16384", "-evp",
               "aes-256-gcm"], timeout=120)
    m = re.search(r"aes-256-gcm\s+([\d.]+)k", out, re.IGNORECASE)
    aes_mib = float(m.group(1)) * 1000 / (1024 * 1024)
    # One side of a full mutual handshake: one signature (CertificateVerify), two verifications
    # (the peer's CertificateVerify and its leaf's signature), an X25519 key pair and derivation.
    side_us = sign_us + 2 * verify_us + 2 * x25519_us
    return {"sign_us": sign_us, "verify_us": verify_us, "x25519_us": x25519_us,
            "aes_mib": aes_mib, "side_us": side_us,
            # a pair does both sides; the machine's cores share that work
            "handshakes_per_s": os.cpu_count() * 1e6 / (2 * side_us)}


# ---------------------------------------------------------------------------------------------
# The run

ROWS = [
    # key, title, unit, higher_is_better
    ("rps", "1. keep-alive requests/s (64 B, 32 conns)", "req/s", True),
    ("p50", "1. keep-alive p50 latency", "us", False),
    ("p99", "1. keep-alive p99 latency", "us", False),
    ("hs_full", "2. full mTLS handshakes/s (resumption off)", "hs/s", True),
    ("hs_full_p99", "2. full handshake request p99", "us", False),
    ("hs_dns", f"2. full handshakes/s, connect: a DNS name (TTL {DNS_TTL}s)", "hs/s", True),
    ("hs_resumed", "3. handshakes/s, resumption on", "hs/s", True),
    ("bulk", "4. bulk, one 100 MiB stream", "MiB/s", True),
    ("idle_kib", "5. RSS per idle connection (2000 held)", "KiB", False),
    ("cpu_req", "6. proxy CPU per keep-alive request", "us", False),
    ("cpu_hs", "6. proxy CPU per full handshake", "us", False),
]
PEERS = ["haproxy", "nginx", "stunnel"]
COLUMNS = ["baseline", "meshtls"] + PEERS + ["meshtls-2w"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sidecar", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=4, help="seconds per wrk load")
    ap.add_argument("--only", default="", help="comma-separated columns (default: all)")
    args = ap.parse_args()
    columns = [c for c in COLUMNS if not args.only or c in args.only.split(",") or
               c == "baseline"]
    sidecar = os.path.abspath(args.sidecar)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 3 * IDLE_CONNECTIONS:
        sys.exit(f"bench: the open-files limit ({hard}) is too low for {IDLE_CONNECTIONS} "
                 "idle connections")

    d = tempfile.mkdtemp(prefix="meshtls-bench.")
    pki = os.path.join(d, "pki")
    os.makedirs(pki)
    results = {c: {k: [] for k, *_ in ROWS} for c in columns}
    dns = DnsResponder(DNS_NAME, DNS_TTL)
    try:
        make_pki(pki)
        backend, backend_port = start_backend(d)

        def start(column, resumption):
            tag = f"{column}-{'on' if resumption else 'off'}"
            if column == "meshtls":
                return start_meshtls(d, tag, backend_port, pki, sidecar, resumption, 1)
            if column == "meshtls-2w":
                return start_meshtls(d, tag, backend_port, pki, sidecar, resumption, 2)
            return {"haproxy": start_haproxy, "nginx": start_nginx,
                    "stunnel": start_stunnel}[column](d, tag, backend_port, pki, resumption)

        def ready(pair):
            pair.check_alive()
            return serves(pair.port)

        # Pairs for the load rows, started once and idle while others are measured; the
        # repetitions go round-robin over the columns so a noisy moment hits all of them.
        pairs = {}
        for c in columns:
            if c == "baseline":
                pairs[(c, False)] = pairs[(c, True)] = Pair(c, None, None, backend_port)
                continue
            for resumption in (False, True):
                pairs[(c, resumption)] = start(c, resumption)
            if c in ("meshtls", "meshtls-2w"):
                # The DNS row: the same pair, resumption off, with `connect:` a DNS name.
                pairs[(c, "dns")] = start_meshtls(d, f"{c}-dns", backend_port, pki, sidecar,
                                                  False, 1 if c == "meshtls" else 2, dns)
        for key, pair in pairs.items():
            wait_until(f"{key[0]} to serve", lambda pair=pair: ready(pair))
            wrk(pair.port, 1, close=False)  # warm-up
            wrk(pair.port, 1, close=True)

        for rep in range(args.reps):
            log(f"bench: repetition {rep + 1} of {args.reps}")
            for c in columns:
                pair = pairs[(c, False)]
                cpu0 = pair.cpu_seconds()
                r = wrk(pair.port, args.duration, close=False)
                cpu = pair.cpu_seconds() - cpu0
                results[c]["rps"].append(r["rps"])
                results[c]["p50"].append(r["p50"])
                results[c]["p99"].append(r["p99"])
                if c != "baseline":
                    results[c]["cpu_req"].append(cpu * 1e6 / r["requests"])

                cpu0 = pair.cpu_seconds()
                r = wrk(pair.port, args.duration, close=True)
                cpu = pair.cpu_seconds() - cpu0
                results[c]["hs_full"].append(r["rps"])
                results[c]["hs_full_p99"].append(r["p99"])
                if c != "baseline":
                    results[c]["cpu_hs"].append(cpu * 1e6 / r["requests"])
                    r = wrk(pairs[(c, True)].port, args.duration, close=True)
                    results[c]["hs_resumed"].append(r["rps"])
                if (c, "dns") in pairs:
                    r = wrk(pairs[(c, "dns")].port, args.duration, close=True)
                    results[c]["hs_dns"].append(r["rps"])
                results[c]["bulk"].append(bulk(pair.port))
                pair.check_alive()
                got = {k: v[-1] for k, v in results[c].items() if v}
                log(f"  {c}: " + ", ".join(f"{k} {fmt(v)}" for k, v in got.items()))

        for c in columns:
            if c == "baseline":
                continue
            for key in [k for k in pairs if k[0] == c]:
                pairs[key].stop()

        # Idle memory on a fresh pair each time: warmed by one request, then 2000 held open.
        for rep in range(args.reps):
            for c in columns:
                if c == "baseline":
                    continue
                pair = start(c, False)
                wait_until(f"{c} to serve", lambda pair=pair: ready(pair))
                before = pair.rss_kib()
                held = hold_idle_connections(pair.port, IDLE_CONNECTIONS)
                pair.check_alive()
                after = pair.rss_kib()
                results[c]["idle_kib"].append((after - before) / IDLE_CONNECTIONS)
                for s in held:
                    s.close()
                pair.stop()
        backend.stop()
        speed = openssl_speed(2)
    finally:
        Proc.stop_all()
        dns.stop()
    report(args, columns, results, speed, dns.queries)
    shutil.rmtree(d, ignore_errors=True)


def fmt(v):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def versions():
    def first_line(cmd, containing=""):
        p = subprocess.run(cmd, capture_output=True, text=True)
        return [l for l in (p.stdout + p.stderr).splitlines() if containing in l][0].strip()

    return [first_line(["openssl", "version"]), first_line(["haproxy", "-v"]),
            first_line(["nginx", "-v"]), first_line(["stunnel4", "-version"], "stunnel ")]


def report(args, columns, results, speed, dns_queries):
    def median(c, k):
        vals = results[c][k]
        return statistics.median(vals) if vals else None

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
    except (OSError, AttributeError):
        pass
    lines = [
        f"meshtls benchmark, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.node()}: {os.cpu_count()} cores ({cpu}), {platform.release()}",
        "; ".join(versions()),
        f"pairs of proxies, 1 worker each (meshtls-2w: 2); TLS 1.3, X25519, ECDSA P-256, client "
        f"certificates verified both ways; medians of {args.reps} repetitions of "
        f"{args.duration}s wrk loads; ratio = meshtls / best peer",
        "",
    ]
    header = ["row", "unit"] + columns + ["ratio"]
    table = []
    for key, title, unit, higher in ROWS:
        row = [title, unit]
        for c in columns:
            row.append(fmt(median(c, key)))
        peer_values = [median(c, key) for c in PEERS if c in columns and median(c, key)]
        mine = median("meshtls", key) if "meshtls" in columns else None
        if peer_values and mine:
            best = max(peer_values) if higher else min(peer_values)
            row.append(f"{mine / best:.2f}x")
        else:
            row.append("-")
        table.append(row)
    widths = [max(len(str(r[i])) for r in [header] + table) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    lines.append(line(header))
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines.extend(line(r) for r in table)
    lines.append("")
    lines.append(
        f"ceiling (openssl speed): ECDSA P-256 sign {speed['sign_us']:.1f} us, verify "
        f"{speed['verify_us']:.1f} us; X25519 {speed['x25519_us']:.1f} us; AES-256-GCM "
        f"{speed['aes_mib']:,.0f} MiB/s per core. Crypto per handshake side (1 sign, 2 verify, "
        f"2 X25519) {speed['side_us']:.0f} us, so at most "
        f"{speed['handshakes_per_s']:,.0f} full handshakes/s through a pair on "
        f"{os.cpu_count()} cores with nothing else running.")
    lines.append(
        f"row hs_dns: the outbound side's connect: is {DNS_NAME}, answered by a DNS server on "
        f"loopback with a TTL of {DNS_TTL}s ({dns_queries} queries in the whole run); row hs_full "
        "is the same pair with connect: 127.0.0.1.")
    lines.append("")
    lines.append("every repetition:")
    for key, title, unit, _ in ROWS:
        for c in columns:
            vals = results[c][key]
            if vals:
                lines.append(f"  {key:12} {c:11} " + " ".join(fmt(v) for v in vals))
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    log(f"bench: written to {args.out}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        Proc.stop_all()
        sys.exit(130)
