"""Hosts as namespaces on a bridge: names, addresses and the commands that build and remove them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from scripts.wan.netns import Network, plan_hosts, setup_commands, tbf, teardown_commands


def test_plan_gives_unique_short_names_and_one_subnet() -> None:
    layout = plan_hosts(9999, 4)
    names = [n for h in layout.hosts for n in (h.veth_host, h.veth_switch)]
    assert len(set(names)) == len(names) and all(len(n) <= 15 for n in names)  # IFNAMSIZ
    assert [h.address for h in layout.hosts] == [f"10.77.249.{i}" for i in (1, 2, 3, 4)]
    assert len({h.namespace for h in layout.hosts} | {layout.switch}) == 5
    with pytest.raises(ValueError):
        plan_hosts(10_000, 3)


def test_shaping_puts_a_token_bucket_on_both_ends_of_every_link() -> None:
    layout = plan_hosts(1, 3)
    shaped = [c for c in setup_commands(layout, rate_mbit=100.0) if c[0] == "tc"]
    devices = sorted(c[c.index("dev") + 1] for c in shaped)
    assert devices == sorted([h.veth_host for h in layout.hosts] + [h.veth_switch for h in layout.hosts])
    assert not [c for c in setup_commands(layout, rate_mbit=None) if c[0] == "tc"]
    assert tbf(100.0)[:5] == ["root", "tbf", "rate", "100.0mbit", "burst"]


def test_teardown_removes_every_namespace() -> None:
    layout = plan_hosts(2, 3)
    removed = {c[3] for c in teardown_commands(layout) if c[:3] == ["ip", "netns", "del"]}
    assert removed == {h.namespace for h in layout.hosts} | {layout.switch}


@pytest.mark.timeout(60)
def test_the_network_is_built_and_always_removed() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        pytest.skip("building namespaces needs root and iproute2")
    layout = plan_hosts(os.getpid() % 10000, 3)

    def namespaces() -> str:
        return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout

    with Network(layout, rate_mbit=100.0):
        assert all(h.namespace in namespaces() for h in layout.hosts)
        a, b = layout.hosts[0], layout.hosts[2]
        server = subprocess.Popen(
            ["ip", "netns", "exec", b.namespace, sys.executable, "-c",
             "import socket; s = socket.create_server(('%s', 9)); print('up', flush=True); c, _ = s.accept(); c.sendall(b'hi')"
             % b.address],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "up"
            client = subprocess.run(
                ["ip", "netns", "exec", a.namespace, sys.executable, "-c",
                 "import socket; print(socket.create_connection(('%s', 9), timeout=10).recv(2).decode())" % b.address],
                capture_output=True, text=True, timeout=30,
            )
            assert client.stdout.strip() == "hi", client.stderr
        finally:
            server.kill()
            server.wait(timeout=10)
    assert not any(h.namespace in namespaces() for h in layout.hosts) and layout.switch not in namespaces()
