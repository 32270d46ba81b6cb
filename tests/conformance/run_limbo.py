#!/usr/bin/env python3
"""X.509 path-validation conformance (ctest x509_limbo).

Runs every case of the x509-limbo selection in tests/conformance/x509-limbo/limbo-selected.json
through `meshtls-certmgr verify --profile svid-shape` (the certification path the sidecar
validates, plus the X.509-SVID leaf rules that need no SPIFFE ID: CA:FALSE, no keyCertSign or
cRLSign; the limbo cases are not SPIFFE certificates) and requires that the cases meshtls decides
differently from the suite are exactly those listed, each with its reason, in
tests/conformance/limbo-differences.txt.

    run_limbo.py CERTMGR_BINARY [--only GLOB] [--jobs N] [--timeout SECONDS] [--verbose]

A verifier that does not answer within the timeout counts as a difference (HANG): some cases are
denial-of-service chains. Python 3 standard library only.
"""
import argparse
import concurrent.futures
import datetime
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = os.path.join(HERE, "x509-limbo", "limbo-selected.json")
DIFFERENCES = os.path.join(HERE, "limbo-differences.txt")

# Sanitizer reports exit 1 by default, which would read as "invalid": make them stand out.
SANITIZER_ENV = dict(os.environ)
for name in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
    SANITIZER_ENV[name] = ":".join(filter(None, [os.environ.get(name), "exitcode=86"]))


def validation_time(case):
    """The case's validation time as Unix seconds; the suite leaves it out for 'now'."""
    when = case.get("validation_time")
    if not when:
        return int(time.time())
    return int(datetime.datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp())


def write_pems(path, pems):
    with open(path, "w") as out:
        out.write("".join(p if p.endswith("\n") else p + "\n" for p in pems))


def verify(certmgr, case, timeout):
    """Returns (verdict, detail): verdict is SUCCESS, FAILURE or HANG."""
    with tempfile.TemporaryDirectory(prefix="limbo-") as tmp:
        bundle = os.path.join(tmp, "bundle.pem")
        chain = os.path.join(tmp, "chain.pem")
        write_pems(bundle, case["trusted_certs"])
        # The chain as a peer sends it: the leaf first, then the untrusted intermediates.
        write_pems(chain, [case["peer_certificate"]] + list(case["untrusted_intermediates"]))
        purpose = "client" if case["validation_kind"] == "CLIENT" else "server"
        command = [certmgr, "verify", "--profile", "svid-shape", "--bundle", bundle, "--chain",
                   chain, "--purpose", purpose, "--at", str(validation_time(case))]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                  env=SANITIZER_ENV)
        except subprocess.TimeoutExpired:
            return "HANG", f"no answer within {timeout:g}s"
        if done.returncode == 0:
            return "SUCCESS", ""
        # 1: the chain is invalid. 2: certmgr refused the input files before verifying (too many
        # certificates, a bundle entry that is no CA), which it says naming --bundle or --chain;
        # any other exit 2 is a usage error. A crash (a signal, or a sanitizer's exit) must never
        # pass as a refusal.
        refused_input = done.returncode == 2 and done.stderr.startswith(
            ("meshtls-certmgr: --bundle:", "meshtls-certmgr: --chain:"))
        if done.returncode != 1 and not refused_input:
            return f"EXIT{done.returncode}", (done.stdout + done.stderr).strip()[-200:]
        return "FAILURE", (done.stderr.strip().splitlines() or [""])[-1][:200]


def listed_differences():
    """{(tier, id): reason} from limbo-differences.txt (TIER ID WHY...)."""
    listed = {}
    with open(DIFFERENCES) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split(None, 2)
            if len(fields) < 3:
                sys.exit(f"{DIFFERENCES}:{number}: want 'TIER ID WHY', got {line!r}")
            listed[(fields[0], fields[1])] = fields[2]
    return listed


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("certmgr", help="path of the meshtls-certmgr binary")
    parser.add_argument("--only", help="glob on case ids (the comparison then covers those only)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=20.0, help="per case")
    parser.add_argument("--verbose", action="store_true", help="print every case")
    args = parser.parse_args()

    with open(CASES) as f:
        cases = json.load(f)["testcases"]
    if args.only:
        cases = [c for c in cases if fnmatch.fnmatchcase(c["id"], args.only)]
    if not cases:
        sys.exit("run_limbo: no cases selected")

    differing = {}
    passed = {"core": 0, "strict": 0}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        verdicts = pool.map(lambda c: verify(args.certmgr, c, args.timeout), cases)
        for case, (verdict, detail) in zip(cases, verdicts):
            same = verdict == case["expected_result"]
            if args.verbose or not same:
                print(f"{'PASS' if same else 'DIFF'} {case['tier']:6s} {case['id']}: "
                      f"expected {case['expected_result']}, got {verdict}"
                      + (f" ({detail})" if detail and not same else ""))
            if same:
                passed[case["tier"]] = passed.get(case["tier"], 0) + 1
            else:
                differing[(case["tier"], case["id"])] = verdict

    for tier, count in sorted(passed.items()):
        total = sum(1 for c in cases if c["tier"] == tier)
        print(f"tier {tier}: {count} of {total} as the suite expects")

    listed = listed_differences()
    if args.only:
        listed = {k: v for k, v in listed.items() if fnmatch.fnmatchcase(k[1], args.only)}
    status = 0
    # A crash or usage error is never an accepted difference, listed or not.
    broken = sorted(k for k, v in differing.items() if v.startswith("EXIT"))
    new = sorted(set(differing) - set(listed))
    gone = sorted(set(listed) - set(differing))
    if broken:
        print("run_limbo: the verifier failed abnormally (crash or usage error) on:")
        print("".join(f"  {t} {i}: {differing[(t, i)]}\n" for t, i in broken), end="")
        status = 1
    if new:
        print("run_limbo: cases that differ and are not in limbo-differences.txt "
              "(a regression, or list them with why):")
        print("".join(f"  {t} {i}\n" for t, i in new), end="")
        status = 1
    if gone:
        print("run_limbo: listed in limbo-differences.txt but no longer differing "
              "(delete these lines):")
        print("".join(f"  {t} {i}\n" for t, i in gone), end="")
        status = 1
    if status == 0:
        print(f"run_limbo: every difference is listed with its reason ({len(differing)} cases)")
    return status


if __name__ == "__main__":
    sys.exit(main())
