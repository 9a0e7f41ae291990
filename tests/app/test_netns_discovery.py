"""Discovery across two network namespaces joined by a veth pair: a pool in one is found from the other within a second.

Creating namespaces needs root. The test builds everything inside namespaces of its own
(10.x addresses on a private veth pair) and always removes them. Without root it is
skipped and says why; as root it must run, and any failure to set up is an error.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from core.identity import Identity

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(90)


def ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        pytest.fail(f"`ip {' '.join(args)}` failed: {result.stderr.strip()} (the test needs CAP_NET_ADMIN and `ip netns`)")


@contextmanager
def two_namespaces() -> Iterator[tuple[str, str, str, str]]:
    """Namespaces A and B joined by a veth pair; yields (ns_a, address_a, ns_b, address_b)."""
    tag = os.getpid() % 100000
    ns_a, ns_b = f"bf-disc-a-{tag}", f"bf-disc-b-{tag}"
    veth_a, veth_b = f"bfva{tag}", f"bfvb{tag}"
    subnet = f"10.{200 + tag % 50}.{tag % 250}"
    address_a, address_b = f"{subnet}.1", f"{subnet}.2"
    try:
        ip("netns", "add", ns_a)
        ip("netns", "add", ns_b)
        ip("link", "add", veth_a, "type", "veth", "peer", "name", veth_b)
        ip("link", "set", veth_a, "netns", ns_a)
        ip("link", "set", veth_b, "netns", ns_b)
        for ns, dev, address in ((ns_a, veth_a, address_a), (ns_b, veth_b, address_b)):
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", dev, "up", "multicast", "on")
            ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)
        yield ns_a, address_a, ns_b, address_b
    finally:
        for ns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", veth_a], capture_output=True, timeout=10)


def in_namespace(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.app.mdns_peer", *args]


def test_a_pool_in_one_namespace_is_found_from_another_within_a_second() -> None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root; run the suite as root to test discovery across a veth pair")
    if shutil.which("ip") is None:
        pytest.fail("`ip` (iproute2) is missing; install it with scripts/system-deps/desktop.sh")
    pool_id = Identity.generate().fingerprint
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with two_namespaces() as (ns_a, address_a, ns_b, address_b):
        advertiser = subprocess.Popen(in_namespace(ns_a, "advertise", address_a, pool_id), stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        try:
            assert advertiser.stdout is not None
            line = advertiser.stdout.readline().strip()
            if line != "registered":
                advertiser.kill()
                pytest.fail(f"the advertiser in {ns_a} did not register: {line!r} {advertiser.communicate(timeout=10)[1][-3000:]}")
            browse = subprocess.run(in_namespace(ns_b, "browse", address_b, pool_id, "5"), capture_output=True, text=True,
                                    timeout=40, env=env, cwd=ROOT)
            assert browse.returncode == 0, browse.stderr
            result = json.loads(browse.stdout.strip().splitlines()[-1])
        finally:
            if advertiser.stdin is not None:
                advertiser.stdin.close()
            try:
                advertiser.wait(10)
            except subprocess.TimeoutExpired:
                advertiser.kill()
        assert result["found"], f"the pool in {ns_a} was not found from {ns_b}: {browse.stderr[-2000:]}"
        assert result["ws_url"] == f"wss://{address_a}:8765/ws"
        assert result["found_after_s"] < 1.0, f"found only after {result['found_after_s']:.2f} s"
