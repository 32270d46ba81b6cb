#!/usr/bin/env python3
"""Checks the code layout: what each CMake library includes against what it links and against
the dependency order in scripts/layout.txt.

  check-layout.py --targets BUILD/layout-targets.txt [--source-dir DIR] [--table FILE]
  check-layout.py --self-test

The targets file is written by CMake at configure time (tests/CMakeLists.txt): every library
and binary of the checked folders with its folder, sources and links. For each one:

  1. its folder is in the table, and it links only libraries of its own folder or of folders
     the table allows it;
  2. each `#include "folder/..."` of its sources (and of the headers it owns) names its own
     folder or one the table allows (so nothing includes a folder later in the order);
  3. each included project header belongs to a library it links, directly or through PUBLIC
     links; each included header of a walled-off dependency (OpenSSL's libssl and libcrypto,
     gRPC, protobuf, prometheus-cpp, c-ares, GoogleTest) to a target it links likewise;
  4. each library it links directly, and each walled-off dependency, has at least one header
     it includes (no unused links). Abseil and the system libraries are not checked: their
     targets do not map simply to header folders, and Abseil comes with meshtls_base anyway.

A header belongs to the library that compiles the .cc of the same name, else to every library
of its folder. Exits 1 and prints one line per violation.
"""

import argparse
import os
import re
import sys
import tempfile

# Included header prefix -> the imported target that provides it. The first match wins, so
# libssl's headers come before the rest of openssl/.
EXTERNAL_HEADERS = [
    ("openssl/ssl.h", "OpenSSL::SSL"),
    ("openssl/tls1.h", "OpenSSL::SSL"),
    ("openssl/", "OpenSSL::Crypto"),
    ("grpcpp/", "gRPC::grpc++"),
    ("grpc/", "gRPC::grpc"),
    ("google/protobuf/", "protobuf::libprotobuf"),
    ("prometheus/", "prometheus-cpp::core"),
    ("ares.h", "PkgConfig::CARES"),
    ("ares_", "PkgConfig::CARES"),
    ("gtest/", "GTest::gtest"),
    ("gmock/", "GTest::gmock"),
]
CHECKED_EXTERNAL_TARGETS = {target for _, target in EXTERNAL_HEADERS}

# Generated headers: "meshtls/ca/v1/ca.pb.h" comes from proto/meshtls/ca/v1/ca.proto.
GENERATED_PREFIX = "meshtls/"
GENERATED_FOLDER = "proto"

INCLUDE_RE = re.compile(r'^\s*#\s*include\s*([<"])([^">]+)[">]', re.MULTILINE)
SOURCE_SUFFIXES = (".cc", ".h")


def parse_table(text):
    """Returns [(folder, set of allowed folders)] in order, or raises ValueError."""
    rows = []
    seen = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        folder, sep, rest = line.partition(":")
        folder = folder.strip()
        if not sep or not folder:
            raise ValueError(f"line {number}: expected 'folder: allowed folders...'")
        if folder in seen:
            raise ValueError(f"line {number}: {folder} is listed twice")
        allowed = set()
        for pattern in rest.split():
            if pattern.endswith("/*"):
                matches = [f for f in seen if f.startswith(pattern[:-1])]
            else:
                matches = [f for f in seen if f == pattern]
            if not matches:
                raise ValueError(f"line {number}: {folder} allows {pattern}, which is not on an "
                                 "earlier line (the table is the dependency order)")
            allowed.update(matches)
        seen.append(folder)
        rows.append((folder, allowed))
    return rows


class Target:
    def __init__(self, fields):
        self.name, self.type, self.folder = fields[0], fields[1], fields[2]
        self.sources = fields[3].split()
        self.links = clean_links(fields[4].split())
        self.public_links = clean_links(fields[5].split())

    @property
    def imported(self):
        return self.type == "IMPORTED"


def clean_links(tokens):
    """Drops generator expressions: $<LINK_ONLY:x> is a PRIVATE link of a static library (not
    usable by dependents), and the rest are link flags, not targets."""
    return [t for t in tokens if not t.startswith("$<") and not t.startswith("-") and t != ""]


def parse_targets(text):
    targets = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 6:
            raise ValueError(f"targets line {number}: expected 6 tab-separated fields")
        target = Target(fields)
        targets[target.name] = target
    return targets


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def includes_of(path):
    """[(line number, header, is_quoted)] of a source file."""
    text = read(path)
    out = []
    for m in INCLUDE_RE.finditer(text):
        out.append((text.count("\n", 0, m.start()) + 1, m.group(2), m.group(1) == '"'))
    return out


def external_target(header):
    for prefix, target in EXTERNAL_HEADERS:
        if header.startswith(prefix):
            return target
    return None


def check(source_dir, targets, table_rows):
    """Returns the list of violations (strings)."""
    errors = []
    allowed = dict(table_rows)
    project_roots = {folder.split("/")[0] for folder, _ in table_rows}
    libraries = {n: t for n, t in targets.items() if not t.imported}

    def folder_of_header(header):
        if header.startswith(GENERATED_PREFIX):
            return GENERATED_FOLDER
        return os.path.dirname(header)

    def is_project_header(header, quoted):
        return quoted and (header.startswith(GENERATED_PREFIX) or
                           header.split("/")[0] in project_roots)

    # Which libraries own a header: the one compiling the .cc of the same name, else every
    # library of the header's folder.
    by_folder = {}
    for t in libraries.values():
        by_folder.setdefault(t.folder, []).append(t.name)

    def owners(header):
        folder = folder_of_header(header)
        if folder == GENERATED_FOLDER:
            return set(by_folder.get(folder, []))
        stem = os.path.splitext(os.path.basename(header))[0]
        for name in by_folder.get(folder, []):
            if any(os.path.splitext(s)[0] == stem for s in libraries[name].sources):
                return {name}
        return set(by_folder.get(folder, []))

    def reachable(target):
        """The targets `target` may use: its direct links and, through them, PUBLIC links."""
        out = set()
        stack = list(target.links)
        while stack:
            name = stack.pop()
            if name in out:
                continue
            out.add(name)
            if name in targets:
                stack.extend(targets[name].public_links)
        return out

    for name in sorted(libraries):
        t = libraries[name]
        if t.folder not in allowed:
            errors.append(f"{name}: its folder {t.folder} is not in the layout table")
            continue
        may_see = allowed[t.folder] | {t.folder}
        # Links against the order.
        for link in t.links:
            if link in libraries and libraries[link].folder not in may_see:
                errors.append(f"{name} ({t.folder}) links {link} of {libraries[link].folder}, "
                              "which the layout table does not allow it (a later folder, or "
                              "the other binary's)")
        # The files it compiles and the headers it owns.
        # Generated sources (absolute paths into the build tree) are not ours to check.
        files = [os.path.join(t.folder, s) for s in t.sources
                 if s.endswith(SOURCE_SUFFIXES) and not os.path.isabs(s)]
        folder_path = os.path.join(source_dir, t.folder)
        if os.path.isdir(folder_path):
            for entry in sorted(os.listdir(folder_path)):
                header = os.path.join(t.folder, entry)
                if entry.endswith(".h") and name in owners(header) and header not in files:
                    files.append(header)
        if not files:
            continue  # generated sources only (meshtls_proto)
        visible = reachable(t)
        used = set()
        for rel in files:
            try:
                includes = includes_of(os.path.join(source_dir, rel))
            except OSError as e:
                errors.append(f"{name}: cannot read {rel}: {e.strerror}")
                continue
            for line, header, quoted in includes:
                where = f"{rel}:{line}"
                if is_project_header(header, quoted):
                    folder = folder_of_header(header)
                    header_owners = owners(header)
                    used |= header_owners  # a wrong include is reported once, not as unused too
                    if folder not in may_see:
                        errors.append(f"{where}: {name} includes {header}, but {folder} is not "
                                      f"among the folders the layout table allows {t.folder} "
                                      "(a later folder, or the other binary's)")
                        continue
                    if name not in header_owners and not header_owners & visible:
                        errors.append(f"{where}: {name} includes {header} but links none of "
                                      f"{', '.join(sorted(header_owners)) or '(no library)'} "
                                      "(directly or through a PUBLIC link)")
                    continue
                external = external_target(header)
                if external is not None:
                    used.add(external)
                    if external not in visible:
                        errors.append(f"{where}: {name} includes {header} but links no "
                                      f"{external} (directly or through a PUBLIC link)")
        for link in t.links:
            checked = link in libraries or link in CHECKED_EXTERNAL_TARGETS
            if checked and link not in used:
                errors.append(f"{name} links {link} but includes none of its headers (an unused "
                              "link: drop it, or include what it is linked for)")
    return errors


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--source-dir", default=os.path.dirname(here))
    parser.add_argument("--targets", help="layout-targets.txt written by CMake")
    parser.add_argument("--table", default=os.path.join(here, "layout.txt"))
    parser.add_argument("--self-test", action="store_true",
                        help="check that known-bad layouts are caught, then exit")
    args = parser.parse_args(argv)
    if args.self_test:
        return self_test()
    if not args.targets:
        parser.error("--targets is required")
    try:
        rows = parse_table(read(args.table))
        targets = parse_targets(read(args.targets))
    except (OSError, ValueError) as e:
        print(f"check-layout: {e}", file=sys.stderr)
        return 2
    errors = check(args.source_dir, targets, rows)
    for e in errors:
        print(e)
    if errors:
        print(f"check-layout: {len(errors)} violation(s) of {args.table}", file=sys.stderr)
        return 1
    print(f"check-layout: {len([t for t in targets.values() if not t.imported])} targets follow "
          f"{os.path.relpath(args.table, args.source_dir)}")
    return 0


# The self-test: small trees shaped like the real one, each with one known violation (among
# them the ones this check exists for), and one without any.
SELF_TEST_TABLE = """
common/base:
common/pki:      common/base
common/net:      common/base
sidecar/tls:     common/base common/pki
sidecar/metrics: common/base sidecar/tls
certmgr/ca:      common/base common/pki
"""

SELF_TEST_GOOD = {
    "targets": [
        ("meshtls_base", "STATIC_LIBRARY", "common/base", "log.cc", "absl::strings", "absl::strings"),
        ("meshtls_pki", "STATIC_LIBRARY", "common/pki", "key.cc",
         "meshtls_base OpenSSL::Crypto", "meshtls_base OpenSSL::Crypto"),
        ("meshtls_net", "STATIC_LIBRARY", "common/net", "socket.cc", "meshtls_base", "meshtls_base"),
        ("sidecar_tls", "STATIC_LIBRARY", "sidecar/tls", "tls_context.cc",
         "meshtls_pki OpenSSL::SSL", "meshtls_pki OpenSSL::SSL"),
        ("sidecar_metrics", "STATIC_LIBRARY", "sidecar/metrics", "collector.cc",
         "sidecar_tls prometheus-cpp::core", "sidecar_tls prometheus-cpp::core"),
        ("certmgr_ca", "STATIC_LIBRARY", "certmgr/ca", "signer.cc", "meshtls_pki", "meshtls_pki"),
        ("OpenSSL::SSL", "IMPORTED", "", "", "", "OpenSSL::Crypto"),
    ],
    "files": {
        "common/base/log.h": '#include "absl/strings/string_view.h"\n',
        "common/base/log.cc": '#include "common/base/log.h"\n',
        "common/base/check.h": "#include <cstdio>\n",
        "common/pki/key.h": '#include <openssl/evp.h>\n#include "common/base/check.h"\n',
        "common/pki/key.cc": '#include "common/pki/key.h"\n#include "common/base/log.h"\n',
        "common/net/socket.cc": '#include "common/base/log.h"\n',
        "sidecar/tls/handshake_result.h": "enum class HandshakeResult { kOk };\n",
        "sidecar/tls/tls_context.h": '#include <openssl/ssl.h>\n#include "common/pki/key.h"\n',
        # libcrypto's headers through OpenSSL::SSL's own link to OpenSSL::Crypto.
        "sidecar/tls/tls_context.cc": '#include "sidecar/tls/tls_context.h"\n'
                                      '#include "common/base/log.h"\n#include <openssl/err.h>\n',
        "sidecar/metrics/collector.cc": '#include <prometheus/collectable.h>\n'
                                        '#include "sidecar/tls/handshake_result.h"\n',
        "certmgr/ca/signer.cc": '#include "common/pki/key.h"\n',
    },
}


def self_test_cases():
    """(name, edits, expected fragment): each edit maps a file to new contents or a target to
    replaced fields; the expected fragment must appear in a violation."""
    def retarget(name, links, public=None):
        return ("target", name, links, links if public is None else public)

    return [
        # sidecar_tls including the metrics vocabulary (and linking sidecar_metrics for it):
        # metrics comes after tls in the order.
        ("tls includes a later folder",
         [("file", "sidecar/tls/tls_context.cc",
           '#include "sidecar/tls/tls_context.h"\n#include "sidecar/metrics/labels.h"\n'),
          retarget("sidecar_tls", "meshtls_pki OpenSSL::SSL sidecar_metrics")],
         "sidecar_tls includes sidecar/metrics/labels.h, but sidecar/metrics is not among"),
        ("tls links a later library",
         [retarget("sidecar_tls", "meshtls_pki OpenSSL::SSL sidecar_metrics")],
         "sidecar_tls (sidecar/tls) links sidecar_metrics of sidecar/metrics"),
        ("certmgr includes sidecar",
         [("file", "certmgr/ca/signer.cc", '#include "sidecar/tls/tls_context.h"\n')],
         "certmgr_ca includes sidecar/tls/tls_context.h, but sidecar/tls is not among"),
        ("include without a link",
         [retarget("certmgr_ca", "meshtls_base")],
         "certmgr_ca includes common/pki/key.h but links none of meshtls_pki"),
        ("a PRIVATE link is not passed on",
         [retarget("meshtls_pki", "meshtls_base OpenSSL::Crypto",
                   "$<LINK_ONLY:meshtls_base> OpenSSL::Crypto")],
         "sidecar_tls includes common/base/log.h but links none of meshtls_base"),
        ("libssl outside sidecar/tls",
         [("file", "common/net/socket.cc", '#include "common/base/log.h"\n#include <openssl/ssl.h>\n')],
         "meshtls_net includes openssl/ssl.h but links no OpenSSL::SSL"),
        ("unused project link",
         [retarget("certmgr_ca", "meshtls_pki meshtls_net")],
         "certmgr_ca links meshtls_net but includes none of its headers"),
        ("unused external link",
         [retarget("meshtls_net", "meshtls_base prometheus-cpp::core")],
         "meshtls_net links prometheus-cpp::core but includes none of its headers"),
        ("folder not in the table",
         [("add-target", ("sidecar_proxy", "STATIC_LIBRARY", "sidecar/proxy", "connection.cc",
                          "sidecar_tls", "sidecar_tls")),
          ("file", "sidecar/proxy/connection.cc", '#include "sidecar/tls/tls_context.h"\n')],
         "sidecar_proxy: its folder sidecar/proxy is not in the layout table"),
    ]


def run_case(tree, edits):
    targets = {t[0]: list(t) for t in tree["targets"]}
    files = dict(tree["files"])
    for edit in edits:
        if edit[0] == "file":
            files[edit[1]] = edit[2]
        elif edit[0] == "target":
            targets[edit[1]][4] = edit[2]
            targets[edit[1]][5] = edit[3]
        else:
            targets[edit[1][0]] = list(edit[1])
    with tempfile.TemporaryDirectory() as root:
        for rel, text in files.items():
            os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
            with open(os.path.join(root, rel), "w", encoding="utf-8") as f:
                f.write(text)
        parsed = parse_targets("\n".join("\t".join(t) for t in targets.values()))
        return check(root, parsed, parse_table(SELF_TEST_TABLE))


def self_test():
    failures = 0
    clean = run_case(SELF_TEST_GOOD, [])
    if clean:
        print("self-test: the clean tree has violations:\n  " + "\n  ".join(clean))
        failures += 1
    for name, edits, fragment in self_test_cases():
        errors = run_case(SELF_TEST_GOOD, edits)
        if not any(fragment in e for e in errors):
            print(f"self-test: {name}: no violation containing {fragment!r}; got:\n  " +
                  "\n  ".join(errors or ["(none)"]))
            failures += 1
    for bad_table, fragment in [("a: b\nb:\n", "not on an earlier line"),
                                ("a:\na:\n", "listed twice"),
                                ("a b\n", "expected 'folder: allowed folders...'")]:
        try:
            parse_table(bad_table)
            print(f"self-test: table {bad_table!r} was accepted")
            failures += 1
        except ValueError as e:
            if fragment not in str(e):
                print(f"self-test: table {bad_table!r}: {e}")
                failures += 1
    if failures:
        return 1
    print(f"self-test: {len(self_test_cases())} known-bad layouts caught, the clean one passes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
