#!/usr/bin/env python3
"""meshtls beside HAProxy, nginx (stream) and stunnel, measured the same way in one run.

Every proxy runs as a pair (an outbound proxy that originates mutual TLS 1.3 and an inbound
proxy that terminates it, each with one worker) between wrk/curl and a plain HTTP backend, all
on loopback. The pods-* columns compare meshtls' explicit listeners with transparent mode (the
capture rules of `meshtls-sidecar init-network`) between two network namespaces of this run's
own joined by a veth pair, against the same path without a proxy; they need root, and each of
their repetitions runs in fresh namespaces.

Rows: keep-alive requests/s and latency, full and resumed handshakes/s (for meshtls also with
the outbound `connect:` a DNS name served by a DNS server on loopback), one bulk stream, RSS per
idle connection, proxy CPU per request and per handshake, and (pods-* columns) open-loop latency
at a fixed rate; plus the ceiling from `openssl speed`. Each figure is repeated --reps times;
the table shows the median, then every repetition, meshtls / best peer, and transparent /
explicit against the 5 % bar. Run through scripts/bench.sh, which installs the peers and builds
meshtls in Release mode.

Only loopback addresses and the run's own namespaces are used, every load is bounded in time
(wrk -d, curl -m) or count, and every process, namespace and rule made here is removed on exit
(also on failure, Ctrl-C or SIGTERM).
"""

import argparse
import collections
import contextlib
import ctypes
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
BULK_STREAMS = 8  # row 4's concurrent variant
IDLE_CONNECTIONS = 2000
WRK_CONNECTIONS = 32
CLK_TCK = os.sysconf("SC_CLK_TCK")
DNS_NAME = "upstream.bench.test"  # the DNS row's `connect:` name, served by DnsResponder
DNS_TTL = 5
# The pods-* columns: two network namespaces ("pods") on one veth pair, private addresses.
PODS_NETWORK = "10.213.0.0/24"
CLIENT_POD_IP = "10.213.0.1"
SERVER_POD_IP = "10.213.0.2"
POD_APP_PORT = 8080  # the backend in the server pod, on 0.0.0.0
PROXY_UID = 1337  # transparent.proxy_uid: the pods' sidecars run as this user
# The open-loop rows: requests at a fixed rate, whatever the answers do.
FIXED_RATE_KEEPALIVE = 1000  # requests/s over FIXED_RATE_CONNECTIONS keep-alive connections
FIXED_RATE_CONNECTIONS = 4
FIXED_RATE_NEW = 200  # new connections/s, one request each
# Row 8 (loopback columns): new connections at this rate, open loop, resumption off; for the
# pooled column also the stream setup p99 its client sidecar measured meanwhile.
FIXED_RATE_NEW_HIGH = 1000


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


class Endpoint:
    """Where a client connects: host and port, seen from network namespace `netns` (None: this
    process's own)."""

    def __init__(self, host, port, netns=None):
        self.host, self.port, self.netns = host, port, netns

    def url(self, path="/"):
        return f"http://{self.host}:{self.port}{path}"

    def __str__(self):
        return f"{self.host}:{self.port}" + (f" in {self.netns}" if self.netns else "")


def netns_cmd(netns):
    """The command prefix that runs a program inside network namespace `netns`."""
    return ["ip", "netns", "exec", netns] if netns else []


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def in_netns(netns):
    """Moves the calling thread into network namespace `netns` (None: stays) and back on exit;
    sockets made inside keep that namespace after it. Python 3.11 has no os.setns."""
    if netns is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                raise RuntimeError(f"cannot enter network namespace {netns}: "
                                   f"{os.strerror(ctypes.get_errno())}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise RuntimeError("cannot return to the benchmark's own network namespace: "
                                   f"{os.strerror(ctypes.get_errno())}")
    finally:
        os.close(own)


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


NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def outbound_handshakes(admin):
    """(resumed, full) handshakes a meshtls sidecar has completed as the TLS client, read from
    its admin listener's /metrics."""
    with in_netns(admin.netns):
        with NO_PROXY.open(admin.url("/metrics"), timeout=5.0) as r:
            text = r.read().decode()
    counts = {}
    for m in re.finditer(r'^meshtls_tls_handshake_duration_seconds_count\{([^}]*)\} (\S+)$', text,
                         re.M):
        if 'direction="outbound"' in m.group(1):
            counts['resumed="true"' in m.group(1)] = float(m.group(2))
    if len(counts) != 2:
        raise RuntimeError(f"no outbound handshake counts in {admin.url('/metrics')}")
    return counts[True], counts[False]


def stream_setup_buckets(admin):
    """The outbound meshtls_pooled_stream_setup_seconds histogram of a sidecar: [(le, count)]."""
    with in_netns(admin.netns):
        with NO_PROXY.open(admin.url("/metrics"), timeout=5.0) as r:
            text = r.read().decode()
    buckets = []
    for m in re.finditer(r'^meshtls_pooled_stream_setup_seconds_bucket\{([^}]*)\} (\S+)$', text,
                         re.M):
        if 'direction="outbound"' in m.group(1):
            le = re.search(r'le="([^"]+)"', m.group(1)).group(1)
            buckets.append((float("inf") if le == "+Inf" else float(le), float(m.group(2))))
    if not buckets:
        raise RuntimeError(f"no stream setup histogram in {admin.url('/metrics')}")
    return sorted(buckets)


def histogram_p99_us(before, after):
    """The p99 of the observations between two scrapes of a cumulative histogram, as the upper
    bound of the bucket it falls in (microseconds)."""
    deltas = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
    total = deltas[-1][1]
    if total <= 0:
        raise RuntimeError("no stream was set up during the fixed-rate load")
    for le, count in deltas:
        if count >= 0.99 * total:
            return le * 1e6
    return float("inf")


def serves(endpoint):
    try:
        with in_netns(endpoint.netns):
            with NO_PROXY.open(endpoint.url(), timeout=2.0) as r:
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


def start_backend(d, tag="backend", listen_host="127.0.0.1", port=None, netns=None,
                  client_endpoint=None):
    """nginx serving the 64-byte response at / and 100 MiB at /bulk, keep-alive forever, on
    listen_host:port (a free loopback port by default) in network namespace `netns`. Returns
    the process and where clients reach it (`client_endpoint`, by default the listen address)."""
    port = port or free_port()
    endpoint = client_endpoint or Endpoint(listen_host, port, netns)
    www = os.path.join(d, "www")
    os.makedirs(www, exist_ok=True)
    if not os.path.exists(os.path.join(www, "bulk")):
        with open(os.path.join(www, "bulk"), "wb") as f:
            chunk = os.urandom(1024 * 1024)
            for _ in range(BULK_BYTES // len(chunk)):
                f.write(chunk)
    conf = os.path.join(d, f"{tag}.conf")
    with open(conf, "w") as f:
        f.write(f"""
daemon off; master_process off; worker_processes 1; pid {d}/{tag}.pid;
error_log {d}/{tag}.error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  keepalive_requests 10000000; keepalive_timeout 600s;
  sendfile on;
  server {{
    listen {listen_host}:{port} backlog=4096;
    location = / {{ default_type text/plain; return 200 "{RESPONSE_BODY.decode().strip()}\\n"; }}
    location = /bulk {{ root {www}; }}
  }}
}}
""")
    os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
    p = Proc(tag, netns_cmd(netns) + ["nginx", "-c", conf, "-e", f"{d}/{tag}.error.log"], d)
    wait_until(f"the backend ({tag})", lambda: p.check_alive() or serves(endpoint))
    return p, endpoint


class Pair:
    """An outbound + inbound proxy pair of one product, between a client and the backend."""

    def __init__(self, name, out_proc, in_proc, endpoint, prepare=None):
        self.name = name
        self.procs = [p for p in (out_proc, in_proc) if p is not None]
        self.endpoint = endpoint  # where the client connects (the outbound proxy's listener)
        self._prepare = prepare
        self.out_admin = None  # meshtls: the outbound sidecar's admin listener (an Endpoint)

    def prepare(self):
        """Makes the network ready for this pair's load (the pods' capture rules); the main
        thread calls it before each load, and it does nothing if all is in place already."""
        if self._prepare:
            self._prepare()

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
    return Pair(tag, procs["out"], procs["in"], Endpoint("127.0.0.1", out_port))


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


def sidecar_config(pki, cert, admin_port, resumption, body, workers=1):
    """A meshtls sidecar's config: the test PKI's `cert` as a files identity, the listeners or
    transparent section in `body`, the admin port on loopback."""
    return f"""trust_domain: {TRUST_DOMAIN}
identity:
  files: {{cert: {pki}/{cert}.pem, key: {pki}/{cert}.key, trust_bundle: {pki}/ca.pem}}
{body}admin: {{listen: 127.0.0.1:{admin_port}}}
workers: {workers}
tls: {{session_resumption: {"true" if resumption else "false"}}}
limits: {{max_connections: 20000}}
log: {{level: warning}}
"""


def start_meshtls(d, tag, backend_port, pki, sidecar, resumption, workers, dns=None,
                  transport="tls"):
    """A meshtls pair; with `dns` (a DnsResponder), the outbound side connects to its name,
    resolved through it, instead of to 127.0.0.1; `transport` is the outbound listener's."""
    in_port, out_port = free_port(), free_port()
    connect_host = dns.name if dns else "127.0.0.1"
    dns_section = f'dns: {{servers: ["127.0.0.1:{dns.port}"]}}\n' if dns else ""

    admin_ports = {"server": free_port(), "client": free_port()}

    def config(cert, listener):
        return sidecar_config(pki, cert, admin_ports[cert], resumption, listener, workers)

    pair = start_pair(d, tag, out_port, "yaml", {
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
    transport: {transport}
{dns_section}"""),
    }, lambda role, conf: [sidecar, "--config", conf])
    pair.out_admin = Endpoint("127.0.0.1", admin_ports["client"])
    return pair


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
# The pods-* columns: two network namespaces joined by a veth pair, the backend in the server
# pod, and meshtls either as explicit listeners or in transparent mode (init-network's rules).


class Pods:
    """A client and a server "pod": network namespaces of this run's own (named after its pid
    and `tag`), each with lo up and one end of a veth pair (CLIENT_POD_IP, SERVER_POD_IP).
    Owned by the main thread; destroy() stops the processes started in them (`procs`), then
    removes both namespaces, and with them the veth pair and any rules installed in them."""

    def __init__(self, sidecar, tag):
        self.sidecar = sidecar
        self.tag = tag
        self.client = f"meshtls-bench-{os.getpid()}-{tag}-client"
        self.server = f"meshtls-bench-{os.getpid()}-{tag}-server"
        self.created = []
        self.procs = []  # Proc objects running inside the pods
        self.capture_configs = None  # the configs whose rules are installed, or None
        try:
            for ns in (self.client, self.server):
                self._ip("netns", "add", ns)
                self.created.append(ns)
            self._ip("-n", self.client, "link", "add", "eth0", "type", "veth", "peer", "name",
                     "eth0", "netns", self.server)
            for ns, ip in ((self.client, CLIENT_POD_IP), (self.server, SERVER_POD_IP)):
                prefix = PODS_NETWORK.split("/")[1]
                self._ip("-n", ns, "addr", "add", f"{ip}/{prefix}", "dev", "eth0")
                self._ip("-n", ns, "link", "set", "lo", "up")
                self._ip("-n", ns, "link", "set", "eth0", "up")
        except BaseException:
            self.destroy()
            raise

    @staticmethod
    def _ip(*args):
        p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)} failed (exit {p.returncode}): "
                               f"{p.stderr.strip()}")

    def capture(self, configs):
        """Installs the capture rules of `configs` ({namespace: sidecar config path}) with
        `meshtls-sidecar init-network` in each pod. Does nothing when they are in place already.
        (Pods are fresh for each column, so no other column's rules are ever there.)"""
        if configs == self.capture_configs:
            return
        for ns in (self.client, self.server):
            argv = [self.sidecar, "init-network", "--config", configs[ns]]
            p = subprocess.run(netns_cmd(ns) + argv, capture_output=True, text=True, timeout=60)
            if p.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)} in {ns} failed (exit {p.returncode}): "
                                   f"{p.stderr.strip()}")
        self.capture_configs = configs

    def destroy(self):
        for p in self.procs:
            p.stop()
        self.procs = []
        for ns in reversed(self.created):
            p = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True,
                               timeout=30)
            if p.returncode != 0:
                log(f"bench: could not remove network namespace {ns}: {p.stderr.strip()}")
        self.created = []


def pods_sidecar_argv(pods, ns, conf):
    """How a pods' sidecar starts: in its pod, as PROXY_UID (transparent mode needs it; the
    explicit sidecars run as the same user so that only the capture differs)."""
    return netns_cmd(ns) + ["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}",
                            "--clear-groups", pods.sidecar, "--config", conf]


def start_pods_explicit(d, tag, pods, pki, resumption):
    """meshtls' explicit listeners between the pods: the client pod's outbound listener on
    127.0.0.1 connects to the server pod's inbound listener on SERVER_POD_IP, which forwards to
    the backend on 127.0.0.1. No capture rules are installed while it is measured."""
    shift = 1 if resumption else 0  # the resumption-on pair runs beside, on the next ports
    out_port, in_port = 15101 + shift, 15443 + shift
    procs = {}
    for role, ns, cert, body in (
            ("in", pods.server, "server", f"""inbound:
  - name: bench
    listen: {SERVER_POD_IP}:{in_port}
    forward: 127.0.0.1:{POD_APP_PORT}
    allow: [{CLIENT_ID}]
"""),
            ("out", pods.client, "client", f"""outbound:
  - name: bench
    listen: 127.0.0.1:{out_port}
    connect: {SERVER_POD_IP}:{in_port}
    expect: [{SERVER_ID}]
""")):
        conf = os.path.join(d, f"{tag}-{role}.yaml")
        with open(conf, "w") as f:
            f.write(sidecar_config(pki, cert, 15100 + 10 * shift, resumption, body))
        procs[role] = Proc(f"{tag}-{role}", pods_sidecar_argv(pods, ns, conf), d)
        pods.procs.append(procs[role])
    pair = Pair(tag, procs["out"], procs["in"], Endpoint("127.0.0.1", out_port, pods.client))
    pair.out_admin = Endpoint("127.0.0.1", 15100 + 10 * shift, pods.client)
    return pair


def start_pods_transparent(d, tag, pods, pki, resumption):
    """Transparent mode in both pods: each pod's sidecar has the same transparent section
    (outbound: mutual TLS to the pods' network, the peer's SPIFFE ID expected; inbound: strict,
    the peer's ID allowed), and init-network installs its rules before each load. The client
    dials the server pod's backend address itself."""
    shift = 1 if resumption else 0  # the resumption-on pair runs beside, on its own ports
    configs, procs = {}, {}
    for role, ns, cert, peer in (("in", pods.server, "server", CLIENT_ID),
                                 ("out", pods.client, "client", SERVER_ID)):
        body = f"""transparent:
  proxy_uid: {PROXY_UID}
  outbound:
    port: {15001 + 10 * shift}
    rules: [{{name: pods, networks: [{PODS_NETWORK}], action: mesh, expect: [{peer}]}}]
  inbound:
    port: {15006 + 10 * shift}
    mode: strict
    allow: [{peer}]
"""
        conf = os.path.join(d, f"{tag}-{role}.yaml")
        with open(conf, "w") as f:
            f.write(sidecar_config(pki, cert, 15000 + 10 * shift, resumption, body))
        configs[ns] = conf
        procs[role] = Proc(f"{tag}-{role}", pods_sidecar_argv(pods, ns, conf), d)
        pods.procs.append(procs[role])
    pair = Pair(tag, procs["out"], procs["in"],
                Endpoint(SERVER_POD_IP, POD_APP_PORT, pods.client),
                lambda: pods.capture(configs))
    pair.out_admin = Endpoint("127.0.0.1", 15000 + 10 * shift, pods.client)
    return pair


# ---------------------------------------------------------------------------------------------
# Loads


def parse_duration_us(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if m is None:
        raise RuntimeError(f"cannot read the wrk latency {text!r}")
    scale = {"us": 1, "ms": 1e3, "s": 1e6, "m": 60e6}[m.group(2)]
    return float(m.group(1)) * scale


def wrk(endpoint, seconds, close):
    cmd = netns_cmd(endpoint.netns) + ["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s",
                                       "--latency", "--timeout", "5s"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = run(cmd + [endpoint.url()], timeout=seconds + 30)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    if total == 0 or not re.search(r"99%\s+[\d.]+(us|ms|s|m)\b", out):
        raise RuntimeError(f"wrk completed no request at {endpoint}:\n{out}")
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
        raise RuntimeError(f"wrk saw errors at {endpoint}:\n{out}")
    if total == 0:
        raise RuntimeError(f"wrk completed no request at {endpoint}:\n{out}")
    return {"rps": rps, "p50": p50, "p99": p99, "requests": total}


def bulk(endpoint):
    out = run(netns_cmd(endpoint.netns) +
              ["curl", "-s", "--noproxy", "*", "-m", "120", "-o", "/dev/null", "-w",
               "%{size_download} %{time_total}", endpoint.url("/bulk")], timeout=130)
    size, seconds = out.split()
    if int(size) != BULK_BYTES:
        raise RuntimeError(f"bulk transfer at {endpoint} got {size} bytes, want {BULK_BYTES}")
    return BULK_BYTES / (1024 * 1024) / float(seconds)


def bulk_concurrent(endpoint, streams):
    """`streams` 100 MiB downloads at once, each on its own connection: total MiB/s, from the
    first start to the last end. Bounded like bulk()."""
    cmd = netns_cmd(endpoint.netns) + ["curl", "-s", "--noproxy", "*", "-m", "120", "-o",
                                       "/dev/null", "-w", "%{size_download}", endpoint.url("/bulk")]
    start = time.monotonic()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(streams)]
    sizes = [p.communicate(timeout=130)[0] for p in procs]
    seconds = time.monotonic() - start
    if any(int(size or 0) != BULK_BYTES for size in sizes):
        raise RuntimeError(f"concurrent bulk at {endpoint}: got {sizes} bytes, want {BULK_BYTES} each")
    return streams * BULK_BYTES / (1024 * 1024) / seconds


def hold_idle_connections(endpoint, count, deadline_s=60.0):
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
            s = socket.create_connection((endpoint.host, endpoint.port), timeout=10)
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


REQUEST_KEEPALIVE = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
REQUEST_CLOSE = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


def take_response(buf):
    """The length of the whole response at the start of `buf`, or 0 while it is incomplete.
    Anything but a 200 with a Content-Length is an error."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return 0
    head = buf[:end]
    length = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
    if not head.startswith(b"HTTP/1.1 200 ") or length is None:
        raise RuntimeError(f"fixed rate: unexpected response {head[:200]!r}")
    total = end + 4 + int(length.group(1))
    return total if len(buf) >= total else 0


def fixed_rate(endpoint, rate, seconds, keepalive_connections=0):
    """Open-loop load, as wrk2 measures it: request i is due at start + i/rate whatever became
    of the earlier ones, and its latency runs from when it was due to the last byte of its
    response, so a stall counts in full for every request it delays. With
    `keepalive_connections`, the requests go round-robin over that many keep-alive connections
    (pipelined behind a late answer); without, each request opens its own connection and asks
    for Connection: close. Bounded: rate * seconds requests, all answered within seconds + 10 s
    or it fails. Returns p50 and p99 in microseconds."""
    total = int(rate * seconds)
    deadline_s = seconds + 10.0
    latencies, failures = [], []
    # select(2), not epoll: epoll's timeout is in whole milliseconds, so each send would be up
    # to 1 ms late, and that lateness would count as latency. At a high rate of new connections
    # more sockets are open at once than select(2) can watch (FD_SETSIZE, 1024): poll(2) then,
    # whose millisecond timeouts make sends up to 1 ms late in every column alike.
    high_fd_count = keepalive_connections == 0 and rate > 200
    sel = selectors.PollSelector() if high_fd_count else selectors.SelectSelector()
    try:
        with in_netns(endpoint.netns):
            streams = []
            for _ in range(keepalive_connections):
                s = socket.create_connection((endpoint.host, endpoint.port), timeout=10)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(5.0)  # bounds a send; reads happen only when readable
                state = {"sock": s, "due": collections.deque(), "buf": b""}
                sel.register(s, selectors.EVENT_READ, state)
                streams.append(state)
            start = time.monotonic() + 0.05
            deadline = start + deadline_s
            sent = 0
            while len(latencies) + len(failures) < total:
                now = time.monotonic()
                if now > deadline:
                    raise RuntimeError(
                        f"fixed rate at {endpoint}: {total - len(latencies) - len(failures)} of "
                        f"{total} requests unanswered after {deadline_s:.0f}s")
                while sent < total and start + sent / rate <= now:
                    due = start + sent / rate
                    if streams:
                        state = streams[sent % len(streams)]
                        state["due"].append(due)
                        state["sock"].sendall(REQUEST_KEEPALIVE)
                    else:
                        s = socket.socket()
                        s.setblocking(False)
                        s.connect_ex((endpoint.host, endpoint.port))
                        sel.register(s, selectors.EVENT_WRITE,
                                     {"sock": s, "due": due, "buf": b"", "new": True})
                    sent += 1
                wait = start + sent / rate - now if sent < total else 0.5
                for key, events in sel.select(timeout=max(0.0, min(wait, deadline - now))):
                    state = key.data
                    s = state["sock"]
                    if events & selectors.EVENT_WRITE:  # a new connection is up, or failed
                        error = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        sel.unregister(s)
                        if error:
                            failures.append(os.strerror(error))
                            s.close()
                            continue
                        s.send(REQUEST_CLOSE)  # a few bytes into an empty buffer
                        sel.register(s, selectors.EVENT_READ, state)
                        continue
                    try:
                        data = s.recv(65536)
                    except OSError as e:
                        data, error = b"", e.strerror
                    else:
                        error = "closed before the whole response"
                    now = time.monotonic()
                    if not data:
                        if not state.get("new"):
                            raise RuntimeError(f"fixed rate at {endpoint}: a keep-alive "
                                               f"connection ended: {error}")
                        failures.append(error)
                        sel.unregister(s)
                        s.close()
                        continue
                    state["buf"] += data
                    while (n := take_response(state["buf"])) > 0:
                        state["buf"] = state["buf"][n:]
                        if state.get("new"):
                            latencies.append(now - state["due"])
                            sel.unregister(s)
                            s.close()
                            break
                        latencies.append(now - state["due"].popleft())
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()
    if len(failures) > total // 100:
        raise RuntimeError(f"fixed rate at {endpoint}: {len(failures)} of {total} requests "
                           f"failed, first: {failures[0]}")
    latencies.sort()

    def quantile(q):
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e6

    return {"p50": quantile(0.50), "p99": quantile(0.99)}


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
    ("resumed_share", "3. share of those resumed (meshtls' metrics)", "%", True),
    ("bulk", "4. bulk, one 100 MiB stream", "MiB/s", True),
    ("bulk8", "4. bulk, 8 streams of 100 MiB at once (total)", "MiB/s", True),
    ("idle_kib", "5. RSS per idle connection (2000 held)", "KiB", False),
    ("cpu_req", "6. proxy CPU per keep-alive request", "us", False),
    ("cpu_hs", "6. proxy CPU per full handshake", "us", False),
    ("fixed_ka_p50", f"7. p50 at {FIXED_RATE_KEEPALIVE:,} req/s, {FIXED_RATE_CONNECTIONS} "
     "keep-alive conns", "us", False),
    ("fixed_ka_p99", f"7. p99 at {FIXED_RATE_KEEPALIVE:,} req/s, {FIXED_RATE_CONNECTIONS} "
     "keep-alive conns", "us", False),
    ("fixed_new_p50", f"7. p50 at {FIXED_RATE_NEW} new conns/s (resumption off)", "us", False),
    ("fixed_new_p99", f"7. p99 at {FIXED_RATE_NEW} new conns/s (resumption off)", "us", False),
    ("new1k_p50", f"8. p50 at {FIXED_RATE_NEW_HIGH:,} new conns/s (resumption off)", "us", False),
    ("new1k_p99", f"8. p99 at {FIXED_RATE_NEW_HIGH:,} new conns/s (resumption off)", "us", False),
    ("setup1k_p99", f"8. stream setup p99 at {FIXED_RATE_NEW_HIGH:,} new conns/s (sidecar "
     "histogram, bucket bound)", "us", False),
]
# Rows that explain another row rather than measure a cost: no verdict against the bar.
DIAGNOSTIC_ROWS = ["resumed_share"]
FIXED_RATE_ROWS = ["fixed_ka_p50", "fixed_ka_p99", "fixed_new_p50", "fixed_new_p99"]
PEERS = ["haproxy", "nginx", "stunnel"]
# pooled: the meshtls pair with `transport: pooled` (app connections as HTTP/2 CONNECT streams
# over one long-lived mutual-TLS connection): its "handshake" rows measure new app connections,
# which cost a stream, not a handshake.
LOOPBACK_COLUMNS = ["baseline", "meshtls"] + PEERS + ["meshtls-2w", "pooled"]
POD_COLUMNS = ["pods-baseline", "pods-explicit", "pods-transparent"]
COLUMNS = LOOPBACK_COLUMNS + POD_COLUMNS
# Run when --only names no column: the pods-* columns need root, so they run only when named.
DEFAULT_COLUMNS = LOOPBACK_COLUMNS
BASELINES = ("baseline", "pods-baseline")  # no proxy: the rows of proxies stay empty


def choose_columns(only):
    """The columns to run: the loopback ones by default, else those named in `only` plus the
    baseline of their kind (loopback or pods)."""
    if not only:
        return list(DEFAULT_COLUMNS)
    named = [c for c in only.split(",") if c]
    unknown = [c for c in named if c not in COLUMNS]
    if unknown:
        sys.exit(f"bench: unknown column {', '.join(unknown)} in --only (columns: "
                 f"{', '.join(COLUMNS)})")
    columns = [c for c in COLUMNS if c in named]
    if any(c in LOOPBACK_COLUMNS for c in columns) and "baseline" not in columns:
        columns.insert(0, "baseline")
    if any(c in POD_COLUMNS for c in columns) and "pods-baseline" not in columns:
        columns.insert(columns.index(next(c for c in columns if c in POD_COLUMNS)),
                       "pods-baseline")
    return columns


def check_pods_prerequisites():
    """The pods-* columns create network namespaces and install packet-filter rules."""
    if os.geteuid() != 0:
        sys.exit("bench: the pods-* columns need root (they create network namespaces and "
                 "install capture rules): run scripts/bench.sh as root, or leave them out with "
                 "--only (e.g. --only meshtls,haproxy)")
    for tool, package in (("ip", "iproute2"), ("iptables-restore", "iptables"),
                          ("setpriv", "util-linux")):
        if shutil.which(tool) is None:
            sys.exit(f"bench: the pods-* columns need {tool} on PATH (Debian's {package})")


def stop_on_sigterm(signum, frame):
    """SIGTERM and SIGHUP end the run like Ctrl-C, so every process, rule and namespace it made
    is removed on the way out."""
    raise KeyboardInterrupt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sidecar", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=4, help="seconds per wrk load")
    ap.add_argument("--only", default="",
                    help=f"comma-separated columns (default: all): {', '.join(COLUMNS)}")
    args = ap.parse_args()
    columns = choose_columns(args.only)
    with_pods = any(c in POD_COLUMNS for c in columns)
    if with_pods:
        check_pods_prerequisites()
    sidecar = os.path.abspath(args.sidecar)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    signal.signal(signal.SIGHUP, stop_on_sigterm)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 3 * IDLE_CONNECTIONS:
        sys.exit(f"bench: the open-files limit ({hard}) is too low for {IDLE_CONNECTIONS} "
                 "idle connections")

    d = tempfile.mkdtemp(prefix="meshtls-bench.")
    log(f"bench: working directory {d} (the processes' logs; kept if the run fails)")
    pki = os.path.join(d, "pki")
    os.makedirs(pki)
    results = {c: {k: [] for k, *_ in ROWS} for c in columns}
    dns = DnsResponder(DNS_NAME, DNS_TTL)
    live_pods = []  # the pods of the column being measured, removed on the way out
    try:
        make_pki(pki)
        if with_pods:
            # The pods' sidecars run as PROXY_UID: they must reach the configs and keys.
            os.chmod(d, 0o755)
            os.chmod(pki, 0o755)
            for name in os.listdir(pki):
                os.chown(os.path.join(pki, name), PROXY_UID, PROXY_UID)
        backend = backend_port = None
        if any(c in LOOPBACK_COLUMNS for c in columns):
            backend, backend_endpoint = start_backend(d)
            backend_port = backend_endpoint.port
        def start(column, resumption, pods=None):
            tag = f"{column}-{'on' if resumption else 'off'}"
            if column == "meshtls":
                return start_meshtls(d, tag, backend_port, pki, sidecar, resumption, 1)
            if column == "meshtls-2w":
                return start_meshtls(d, tag, backend_port, pki, sidecar, resumption, 2)
            if column == "pooled":
                return start_meshtls(d, tag, backend_port, pki, sidecar, resumption, 1,
                                     transport="pooled")
            if column == "pods-explicit":
                return start_pods_explicit(d, pods.tag, pods, pki, resumption)
            if column == "pods-transparent":
                return start_pods_transparent(d, pods.tag, pods, pki, resumption)
            return {"haproxy": start_haproxy, "nginx": start_nginx,
                    "stunnel": start_stunnel}[column](d, tag, backend_port, pki, resumption)

        def ready(pair):
            pair.check_alive()
            return serves(pair.endpoint)

        def warm_up(key, pair):
            pair.prepare()
            wait_until(f"{key[0]} to serve", lambda: ready(pair))
            wrk(pair.endpoint, 1, close=False)
            wrk(pair.endpoint, 1, close=True)

        def start_pods_column(c, rep):
            """Fresh pods for one repetition of a pods-* column, each with the backend in the
            server pod (on every address, checked from the client pod): one pair of pods for
            the resumption-off pair (and pods-baseline's direct path), one for the
            resumption-on pair. Fresh because a load of new connections leaves kernel state
            behind (TIME_WAIT sockets for 60 s, connection-tracking entries for 120 s) that
            would slow the next such load in the same pods, and in transparent mode, where
            the app and the sidecar dial the same address, more than with explicit listeners.
            Returns the pods and the pairs."""
            column_pods, column_pairs = [], {}
            for resumption in (False, True) if c != "pods-baseline" else (False,):
                pods = Pods(sidecar, f"{c}-{rep + 1}-{'on' if resumption else 'off'}")
                live_pods.append(pods)
                column_pods.append(pods)
                endpoint = Endpoint(SERVER_POD_IP, POD_APP_PORT, pods.client)
                backend, _ = start_backend(d, f"{pods.tag}-backend", "0.0.0.0", POD_APP_PORT,
                                           pods.server, endpoint)
                pods.procs.append(backend)
                if c == "pods-baseline":
                    # Straight to the server pod's backend, with no capture rules installed.
                    column_pairs[(c, False)] = Pair(c, None, None, endpoint)
                else:
                    column_pairs[(c, resumption)] = start(c, resumption, pods)
            for key, pair in column_pairs.items():
                warm_up(key, pair)
            return column_pods, column_pairs

        # Pairs for the load rows, started once and idle while others are measured; the
        # repetitions go round-robin over the columns so a noisy moment hits all of them. The
        # pods-* columns get fresh pods for each repetition (start_pods_column).
        pairs = {}
        for c in columns:
            if c == "baseline":
                pairs[(c, False)] = Pair(c, None, None, Endpoint("127.0.0.1", backend_port))
                continue
            if c in POD_COLUMNS:
                continue
            for resumption in (False, True):
                pairs[(c, resumption)] = start(c, resumption)
            if c in ("meshtls", "meshtls-2w"):
                # The DNS row: the same pair, resumption off, with `connect:` a DNS name.
                pairs[(c, "dns")] = start_meshtls(d, f"{c}-dns", backend_port, pki, sidecar,
                                                  False, 1 if c == "meshtls" else 2, dns)
        for key, pair in pairs.items():
            warm_up(key, pair)

        for rep in range(args.reps):
            log(f"bench: repetition {rep + 1} of {args.reps}")
            for c in columns:
                if c in POD_COLUMNS:
                    column_pods, column_pairs = start_pods_column(c, rep)
                    pairs.update(column_pairs)
                pair = pairs[(c, False)]
                pair.prepare()
                cpu0 = pair.cpu_seconds()
                r = wrk(pair.endpoint, args.duration, close=False)
                cpu = pair.cpu_seconds() - cpu0
                results[c]["rps"].append(r["rps"])
                results[c]["p50"].append(r["p50"])
                results[c]["p99"].append(r["p99"])
                if c not in BASELINES:
                    results[c]["cpu_req"].append(cpu * 1e6 / r["requests"])

                cpu0 = pair.cpu_seconds()
                r = wrk(pair.endpoint, args.duration, close=True)
                cpu = pair.cpu_seconds() - cpu0
                results[c]["hs_full"].append(r["rps"])
                results[c]["hs_full_p99"].append(r["p99"])
                if c not in BASELINES:
                    results[c]["cpu_hs"].append(cpu * 1e6 / r["requests"])
                if (c, "dns") in pairs:
                    r = wrk(pairs[(c, "dns")].endpoint, args.duration, close=True)
                    results[c]["hs_dns"].append(r["rps"])
                results[c]["bulk"].append(bulk(pair.endpoint))
                if c in LOOPBACK_COLUMNS:
                    results[c]["bulk8"].append(bulk_concurrent(pair.endpoint, BULK_STREAMS))
                if c in POD_COLUMNS:
                    r = fixed_rate(pair.endpoint, FIXED_RATE_KEEPALIVE, args.duration,
                                   FIXED_RATE_CONNECTIONS)
                    results[c]["fixed_ka_p50"].append(r["p50"])
                    results[c]["fixed_ka_p99"].append(r["p99"])
                    r = fixed_rate(pair.endpoint, FIXED_RATE_NEW, args.duration)
                    results[c]["fixed_new_p50"].append(r["p50"])
                    results[c]["fixed_new_p99"].append(r["p99"])
                if c in LOOPBACK_COLUMNS:
                    setup_before = stream_setup_buckets(pair.out_admin) if c == "pooled" else None
                    try:
                        r = fixed_rate(pair.endpoint, FIXED_RATE_NEW_HIGH, args.duration)
                    except RuntimeError as e:
                        # A pair that cannot take the rate (full handshakes on two cores): the
                        # row stays empty for it, and the log says why. The pooled transport is
                        # what the row is for: its failure fails the run.
                        if c == "pooled":
                            raise
                        log(f"  {c}: {FIXED_RATE_NEW_HIGH} new conns/s not sustained: {e}")
                    else:
                        results[c]["new1k_p50"].append(r["p50"])
                        results[c]["new1k_p99"].append(r["p99"])
                        if setup_before is not None:
                            results[c]["setup1k_p99"].append(histogram_p99_us(
                                setup_before, stream_setup_buckets(pair.out_admin)))
                pair.check_alive()
                if c not in BASELINES:
                    resumed = pairs[(c, True)]
                    resumed.prepare()
                    before = resumed.out_admin and outbound_handshakes(resumed.out_admin)
                    r = wrk(resumed.endpoint, args.duration, close=True)
                    results[c]["hs_resumed"].append(r["rps"])
                    if resumed.out_admin and c != "pooled":  # pooled: streams, not handshakes
                        after = outbound_handshakes(resumed.out_admin)
                        done = [a - b for a, b in zip(after, before)]
                        if sum(done) == 0:
                            # Capture rules that did not take would measure the no-proxy path.
                            raise RuntimeError(f"{c}: the load made no outbound handshake "
                                               "through the client sidecar")
                        results[c]["resumed_share"].append(100 * done[0] / sum(done))
                    resumed.check_alive()
                got = {k: v[-1] for k, v in results[c].items() if v}
                log(f"  {c}: " + ", ".join(f"{k} {fmt(v)}" for k, v in got.items()))
                if c in POD_COLUMNS:
                    for key in column_pairs:
                        del pairs[key]
                    for pods in column_pods:
                        pods.destroy()
                        live_pods.remove(pods)

        for c in columns:
            if c in BASELINES or c in POD_COLUMNS:
                continue
            for key in [k for k in pairs if k[0] == c]:
                pairs[key].stop()

        # Idle memory on a fresh pair each time: warmed by one request, then 2000 held open.
        for rep in range(args.reps):
            for c in columns:
                if c in BASELINES or c in POD_COLUMNS:
                    continue
                pair = start(c, False)
                wait_until(f"{c} to serve", lambda pair=pair: ready(pair))
                before = pair.rss_kib()
                held = hold_idle_connections(pair.endpoint, IDLE_CONNECTIONS)
                pair.check_alive()
                after = pair.rss_kib()
                results[c]["idle_kib"].append((after - before) / IDLE_CONNECTIONS)
                for s in held:
                    s.close()
                pair.stop()
        if backend:
            backend.stop()
        speed = openssl_speed(2)
    finally:
        Proc.stop_all()
        for pods in live_pods:
            pods.destroy()
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


def markdown_table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    return ([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] +
            [line(r) for r in rows])


CAPTURE_BAR = 0.05  # transparent mode may cost at most 5 % against the explicit listeners


def transparent_vs_explicit(results, median):
    """The second table: pods-transparent / pods-explicit per row, judged against
    CAPTURE_BAR, beside how far each column's repetitions spread (a difference smaller than the
    spread is noise, whichever way the verdict goes); then the latency each proxy column adds
    to pods-baseline at a fixed rate."""
    lines = [f"transparent vs explicit (same pods, same sidecars' code; bar: transparent within "
             f"{CAPTURE_BAR:.0%} of explicit, i.e. >= {1 - CAPTURE_BAR:.2f}x where higher is "
             f"better and <= {1 + CAPTURE_BAR:.2f}x where lower is better):", ""]

    def spread(c, key):
        vals = results[c][key]
        return (max(vals) - min(vals)) / statistics.median(vals) if len(vals) > 1 else None

    table = []
    for key, title, unit, higher in ROWS:
        explicit, transparent = median("pods-explicit", key), median("pods-transparent", key)
        if not explicit or not transparent:
            continue
        ratio = transparent / explicit
        passed = ratio >= 1 - CAPTURE_BAR if higher else ratio <= 1 + CAPTURE_BAR
        spreads = [spread(c, key) for c in ("pods-explicit", "pods-transparent")]
        verdict = "pass" if passed else "FAIL"
        table.append([title, unit, fmt(explicit), fmt(transparent), f"{ratio:.3f}x",
                      "(explains row 3)" if key in DIAGNOSTIC_ROWS else verdict,
                      " / ".join("-" if s is None else f"{s:.0%}" for s in spreads)])
    lines.extend(markdown_table(["row", "unit", "pods-explicit", "pods-transparent",
                                 "transparent / explicit", "5 % bar",
                                 "spread of reps (expl. / transp.)"], table))
    lines.append("")
    for c in ("pods-explicit", "pods-transparent"):
        added = []
        for key in FIXED_RATE_ROWS:
            mine, base = median(c, key), median("pods-baseline", key)
            if mine is not None and base is not None:
                added.append(f"{key.removeprefix('fixed_')} {mine - base:+,.0f} us")
        if added:
            lines.append(f"added latency at a fixed rate vs pods-baseline, {c}: " +
                         ", ".join(added))
    lines.append("")
    return lines


def report(args, columns, results, speed, dns_queries):
    def median(c, k):
        vals = results.get(c, {}).get(k)
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
        f"{args.duration}s loads; ratio = meshtls / best peer",
    ]
    if any(c in POD_COLUMNS for c in columns):
        lines.append(
            f"pods-*: two network namespaces on a veth pair ({PODS_NETWORK}); wrk, curl and the "
            f"fixed-rate client in the client pod ({CLIENT_POD_IP}), the backend in the server "
            f"pod on 0.0.0.0:{POD_APP_PORT}; pods-baseline dials {SERVER_POD_IP}:{POD_APP_PORT} "
            f"without a proxy; pods-explicit: outbound listener 127.0.0.1:15101 -> inbound "
            f"listener {SERVER_POD_IP}:15443; pods-transparent: init-network's capture rules in "
            f"both pods, the client dials {SERVER_POD_IP}:{POD_APP_PORT}; sidecars as uid "
            f"{PROXY_UID}, 1 worker each; fresh pods (and backend) for each column's repetition, "
            "one pair for the resumption-off rows and one for row 3; rows 7 are open-loop "
            "(latency from when each request was due)")
    lines.append("")
    with_ratio = "meshtls" in columns
    header = ["row", "unit"] + columns + (["ratio"] if with_ratio else [])
    table = []
    for key, title, unit, higher in ROWS:
        if all(median(c, key) is None for c in columns):
            continue
        row = [title, unit]
        for c in columns:
            row.append(fmt(median(c, key)))
        peer_values = [median(c, key) for c in PEERS if c in columns and median(c, key)]
        mine = median("meshtls", key)
        if with_ratio and peer_values and mine:
            best = max(peer_values) if higher else min(peer_values)
            row.append(f"{mine / best:.2f}x")
        elif with_ratio:
            row.append("-")
        table.append(row)
    lines.extend(markdown_table(header, table))
    lines.append("")
    if "pods-explicit" in columns and "pods-transparent" in columns:
        lines.extend(transparent_vs_explicit(results, median))
    lines.append(
        f"ceiling (openssl speed): ECDSA P-256 sign {speed['sign_us']:.1f} us, verify "
        f"{speed['verify_us']:.1f} us; X25519 {speed['x25519_us']:.1f} us; AES-256-GCM "
        f"{speed['aes_mib']:,.0f} MiB/s per core. Crypto per handshake side (1 sign, 2 verify, "
        f"2 X25519) {speed['side_us']:.0f} us, so at most "
        f"{speed['handshakes_per_s']:,.0f} full handshakes/s through a pair on "
        f"{os.cpu_count()} cores with nothing else running.")
    if "meshtls" in columns or "meshtls-2w" in columns:
        lines.append(
            f"row hs_dns: the outbound side's connect: is {DNS_NAME}, answered by a DNS server "
            f"on loopback with a TTL of {DNS_TTL}s ({dns_queries} queries in the whole run); row "
            "hs_full is the same pair with connect: 127.0.0.1.")
    lines.append("")
    lines.append("every repetition:")
    for key, title, unit, _ in ROWS:
        for c in columns:
            vals = results[c][key]
            if vals:
                lines.append(f"  {key:13} {c:16} " + " ".join(fmt(v) for v in vals))
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
