"""Hosts as Linux network namespaces on one bridge, with ``tbf`` rate limits on their links.

``plan_hosts`` and the ``*_commands`` functions are pure (they return ``ip``/``tc`` argv
lists); :class:`Network` runs them and always undoes them. Layout, for a tag ``T``::

    bfwT-sw    a namespace holding the bridge br0 (the "switch")
    bfwT-h0    the coordinator's host, 10.77.N.1/24 on its veth, multicast on
    bfwT-h1..  volunteer hosts, 10.77.N.2, 10.77.N.3, ...

Each host's veth has ``tbf`` on its host end (upload) and on its switch end (download),
so each host's access link is shaped in both directions. Needs root (CAP_NET_ADMIN).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

COMMAND_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Host:
    """One emulated machine: its namespace, the two ends of its veth, and its address."""

    namespace: str
    veth_host: str
    veth_switch: str
    address: str


@dataclass(frozen=True, slots=True)
class Layout:
    """The switch namespace and the hosts; ``hosts[0]`` is the coordinator's."""

    switch: str
    hosts: tuple[Host, ...]
    prefix_len: int = 24


def plan_hosts(tag: int, count: int) -> Layout:
    """Names and addresses for ``count`` hosts; ``tag`` (0-9999) keeps parallel runs apart."""
    if not 0 <= tag <= 9999 or not 2 <= count <= 200:
        raise ValueError(f"tag must be 0-9999 and count 2-200, got {tag}, {count}")
    subnet = f"10.77.{tag % 250}"
    hosts = tuple(
        Host(namespace=f"bfw{tag}-h{i}", veth_host=f"bw{tag}h{i}", veth_switch=f"bw{tag}s{i}", address=f"{subnet}.{i + 1}")
        for i in range(count)
    )
    return Layout(switch=f"bfw{tag}-sw", hosts=hosts)


def tbf(rate_mbit: float) -> list[str]:
    """The ``tc qdisc`` arguments of a token bucket at ``rate_mbit`` (burst and queue sized for a 1500-byte MTU)."""
    burst_bytes = max(32 * 1024, int(rate_mbit * 1e6 / 8 / 250))  # at least 4 ms of the rate (HZ=250)
    return ["root", "tbf", "rate", f"{rate_mbit}mbit", "burst", str(burst_bytes), "latency", "50ms"]


def setup_commands(layout: Layout, *, rate_mbit: float | None) -> list[list[str]]:
    """The commands that build ``layout`` (and shape every link at ``rate_mbit`` if given)."""
    sw = layout.switch
    cmds = [
        ["ip", "netns", "add", sw],
        ["ip", "-n", sw, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"],
        ["ip", "-n", sw, "link", "set", "br0", "up"],
    ]
    for h in layout.hosts:
        cmds += [
            ["ip", "netns", "add", h.namespace],
            ["ip", "link", "add", h.veth_host, "type", "veth", "peer", "name", h.veth_switch],
            ["ip", "link", "set", h.veth_host, "netns", h.namespace],
            ["ip", "link", "set", h.veth_switch, "netns", sw],
            ["ip", "-n", sw, "link", "set", h.veth_switch, "master", "br0"],
            ["ip", "-n", sw, "link", "set", h.veth_switch, "up"],
            ["ip", "-n", h.namespace, "link", "set", "lo", "up"],
            ["ip", "-n", h.namespace, "addr", "add", f"{h.address}/{layout.prefix_len}", "dev", h.veth_host],
            ["ip", "-n", h.namespace, "link", "set", h.veth_host, "up", "multicast", "on"],
            ["ip", "-n", h.namespace, "route", "add", "224.0.0.0/4", "dev", h.veth_host],
        ]
        if rate_mbit is not None:
            cmds += [
                ["tc", "-n", h.namespace, "qdisc", "add", "dev", h.veth_host, *tbf(rate_mbit)],
                ["tc", "-n", sw, "qdisc", "add", "dev", h.veth_switch, *tbf(rate_mbit)],
            ]
    return cmds


def teardown_commands(layout: Layout) -> list[list[str]]:
    """The commands that remove ``layout`` (deleting a namespace deletes the veths in it)."""
    return (
        [["ip", "netns", "del", h.namespace] for h in layout.hosts]
        + [["ip", "netns", "del", layout.switch]]
        + [["ip", "link", "del", h.veth_host] for h in layout.hosts]  # left in the root namespace by a half-done setup
    )


def in_namespace(namespace: str, argv: list[str]) -> list[str]:
    """``argv`` run inside ``namespace``."""
    return ["ip", "netns", "exec", namespace, *argv]


class Network:
    """Builds a :class:`Layout` on enter and removes it on exit, even after a failure half-way."""

    def __init__(self, layout: Layout, *, rate_mbit: float | None) -> None:
        self.layout = layout
        self.rate_mbit = rate_mbit

    def __enter__(self) -> Network:
        try:
            for cmd in setup_commands(self.layout, rate_mbit=self.rate_mbit):
                result = subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
                if result.returncode != 0:
                    raise RuntimeError(f"`{' '.join(cmd)}` failed: {result.stderr.strip()}")
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Delete every namespace of the layout that exists (never raises)."""
        for cmd in teardown_commands(self.layout):
            try:
                subprocess.run(cmd, capture_output=True, timeout=COMMAND_TIMEOUT_S)
            except (OSError, subprocess.SubprocessError):
                pass


__all__ = ["Host", "Layout", "Network", "in_namespace", "plan_hosts", "setup_commands", "tbf", "teardown_commands"]
