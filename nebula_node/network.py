"""The guests' network on a node: a libvirt NAT network Nebula manages, or QEMU's
user-mode networking where none can be made.

`prepare` finds the libvirt network `NEBULA_NODE_NETWORK` (default `nebula`) or, when it is
missing, defines it: a bridge, NAT to the outside, DHCP on `NEBULA_NODE_SUBNET` (default
10.213.0.0/24, clear of libvirt's `default` 192.168.122.0/24), autostarted. Where that
fails (no dnsmasq, no right to make a bridge) or the operator asks for `user`, guests get
user-mode networking, as before; `GuestNetwork.summary` says which is in use.

On a managed network each guest gets a fixed address: its MAC comes from its instance id
(`contract.node.guest_mac`) and `Reservations` adds a DHCP host entry for it to the network, so a guest
keeps its address across stop and start; deleting the instance removes the entry and the
lease (dnsmasq's `dhcp_release`). Each NIC carries libvirt's `clean-traffic` filter with
that address, so a guest cannot send as another. `HostGuard` keeps guests off the host:
from the bridge, the host answers DHCP, DNS, ICMP and the metadata service's port, and
rejects everything else (iptables rules in a chain of its own, installed and removed here).

The metadata service is reached at the bridge's address (`http://<gateway>:<meta port>`)
on a managed network and at 10.0.2.2 (QEMU's alias for the host) on user-mode networking,
unless `NEBULA_META_URL` says otherwise (a metadata service on another host).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import shutil
import subprocess
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import libvirt

from nebula_core.config import Settings

log = logging.getLogger("nebula.node.network")

#: The value of `node_network` that asks for QEMU's user-mode networking.
USER_MODE = "user"
#: Where a guest on user-mode networking reaches its host.
USER_MODE_HOST = "10.0.2.2"
#: The first host addresses of a managed subnet are left out of its DHCP range (the
#: gateway is the first).
RESERVED_LOW = 9
#: The nwfilter each guest NIC on a managed network carries, when libvirt has it.
CLEAN_TRAFFIC = "clean-traffic"
_IFACE = re.compile(r"[^A-Za-z0-9_.-]")


def bridge_name(network: str) -> str:
    """The bridge of a network Nebula defines: `nb-<name>`, within Linux's 15 characters."""
    return ("nb-" + _IFACE.sub("", network))[:15]


@dataclass(frozen=True, kw_only=True)
class NetworkPlan:
    """What the settings ask of a node's guest network (see `prepare`)."""

    #: A libvirt network, or `USER_MODE`.
    name: str = USER_MODE
    #: The subnet of the network when Nebula defines it.
    subnet: str = "10.213.0.0/24"
    #: Where guests find the metadata service; empty: derived (see the module).
    meta_url: str = ""
    #: The port the node's metadata service listens on, for the derived URL.
    meta_port: int = 8775

    @classmethod
    def of(cls, settings: Settings) -> NetworkPlan:
        return cls(
            name=settings.node_network or USER_MODE,
            subnet=settings.node_subnet,
            meta_url=settings.meta_url,
            meta_port=settings.meta_host_port[1],
        )


@dataclass(frozen=True, kw_only=True)
class GuestNetwork:
    """Where a node's guests are plugged in, and where they find the metadata service."""

    #: The libvirt network; None: QEMU's user-mode networking.
    name: str | None
    meta_url: str
    bridge: str | None = None
    gateway: str | None = None
    subnet: str | None = None
    dhcp_range: tuple[str, str] | None = None
    #: The nwfilter every NIC carries (None: libvirt has no nwfilter driver, or user mode).
    nic_filter: str | None = None
    #: Why user-mode networking, when it is.
    fallback: str = ""

    @property
    def summary(self) -> str:
        if self.name is None:
            return f"user-mode networking ({self.fallback}); metadata at {self.meta_url}"
        return f"libvirt network {self.name} ({self.subnet} on bridge {self.bridge}, NAT); metadata at {self.meta_url}"


def user_mode(plan: NetworkPlan, why: str) -> GuestNetwork:
    return GuestNetwork(name=None, meta_url=plan.meta_url or f"http://{USER_MODE_HOST}:{plan.meta_port}", fallback=why)


def network_xml(name: str, subnet: ipaddress.IPv4Network) -> str:
    """A NAT network on its own bridge with DHCP over the subnet (but its first hosts)."""
    hosts = list(subnet.hosts())
    if len(hosts) < RESERVED_LOW + 2:
        raise ValueError(f"subnet {subnet} is too small for guests (at least a /27)")
    root = ET.Element("network")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "forward", mode="nat")
    ET.SubElement(root, "bridge", name=bridge_name(name), stp="on", delay="0")
    ip = ET.SubElement(root, "ip", address=str(hosts[0]), netmask=str(subnet.netmask))
    dhcp = ET.SubElement(ip, "dhcp")
    ET.SubElement(dhcp, "range", start=str(hosts[RESERVED_LOW]), end=str(hosts[-1]))
    return ET.tostring(root, encoding="unicode")


def prepare(conn: libvirt.virConnect, plan: NetworkPlan) -> GuestNetwork:
    """The network the node's guests join: `plan.name`, defined and started if need be;
    user-mode networking when that is asked for or cannot be had. Blocking."""
    name = plan.name
    if name == USER_MODE:
        return user_mode(plan, f"NEBULA_NODE_NETWORK={USER_MODE}")
    created = False
    try:
        try:
            net = conn.networkLookupByName(name)
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                raise
            subnet = ipaddress.IPv4Network(plan.subnet, strict=True)
            net = conn.networkDefineXML(network_xml(name, subnet))
            created = True
            log.info("defined libvirt network %s on %s", name, subnet)
        if not net.isActive():
            net.create()
        if not net.autostart():
            net.setAutostart(1)
    except (libvirt.libvirtError, ValueError) as err:  # ValueError: a bad NEBULA_NODE_SUBNET
        if created:
            with contextlib.suppress(libvirt.libvirtError):
                net.undefine()
        why = f"libvirt network {name} is not available: {_message(err)}"
        log.warning("%s; guests get user-mode networking", why)
        return user_mode(plan, why)
    return _described(conn, net, plan)


def _described(conn: libvirt.virConnect, net: libvirt.virNetwork, plan: NetworkPlan) -> GuestNetwork:
    root = ET.fromstring(net.XMLDesc(0))
    bridge = root.find("bridge")
    ip = next((e for e in root.findall("ip") if e.get("family", "ipv4") == "ipv4" and e.get("address")), None)
    if ip is None:
        if not plan.meta_url:
            return user_mode(plan, f"libvirt network {net.name()} has no IPv4 address for the metadata service")
        return GuestNetwork(
            name=net.name(), meta_url=plan.meta_url, bridge=None if bridge is None else bridge.get("name")
        )
    gateway = ip.get("address", "")
    prefix = ip.get("prefix") or ip.get("netmask") or "24"
    subnet = ipaddress.IPv4Network(f"{gateway}/{prefix}", strict=False)
    rng = ip.find("dhcp/range")
    dhcp = None if rng is None else (rng.get("start", ""), rng.get("end", ""))
    return GuestNetwork(
        name=net.name(),
        meta_url=plan.meta_url or f"http://{gateway}:{plan.meta_port}",
        bridge=None if bridge is None else bridge.get("name"),
        gateway=gateway,
        subnet=str(subnet),
        dhcp_range=dhcp,
        nic_filter=CLEAN_TRAFFIC if _has_filter(conn, CLEAN_TRAFFIC) else None,
    )


def _has_filter(conn: libvirt.virConnect, name: str) -> bool:
    try:
        conn.nwfilterLookupByName(name)
        return True
    except libvirt.libvirtError:
        return False  # no such filter, or no nwfilter driver (test:///)


def _message(err: Exception) -> str:
    text = err.get_error_message() if isinstance(err, libvirt.libvirtError) else str(err)
    return (text or repr(err)).splitlines()[0]


# --- fixed addresses ------------------------------------------------------------------------

_AFFECT = libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE | libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG


class Reservations:
    """The DHCP host entries of a managed network: one fixed address per guest MAC."""

    def __init__(self, network: GuestNetwork) -> None:
        self.network = network
        self._lock = threading.Lock()

    def reserve(self, conn: libvirt.virConnect, mac: str) -> str:
        """The address reserved for `mac`, reserving the lowest free one of the DHCP range
        first if it has none. Blocking; safe to repeat."""
        assert self.network.name is not None and self.network.dhcp_range is not None
        with self._lock:
            net = conn.networkLookupByName(self.network.name)
            hosts = _hosts(net)
            if mac in hosts:
                return hosts[mac]
            taken = set(hosts.values()) | _leased(net)
            start, end = (ipaddress.IPv4Address(a) for a in self.network.dhcp_range)
            address = next(
                (
                    str(ipaddress.IPv4Address(n))
                    for n in range(int(start), int(end) + 1)
                    if str(ipaddress.IPv4Address(n)) not in taken
                ),
                None,
            )
            if address is None:
                raise RuntimeError(f"network {self.network.name} has no free address left")
            entry = ET.tostring(ET.Element("host", mac=mac, ip=address), encoding="unicode")
            net.update(
                libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
                libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST,
                -1,
                entry,
                _AFFECT,
            )
            log.info("network=%s reserved %s for %s", self.network.name, address, mac)
            return address

    def release(self, conn: libvirt.virConnect, mac: str) -> None:
        """Remove `mac`'s entry and its lease. Blocking; nothing to remove is success."""
        if self.network.name is None:
            return
        with self._lock:
            try:
                net = conn.networkLookupByName(self.network.name)
            except libvirt.libvirtError:
                return
            address = _hosts(net).get(mac)
            if address is None:
                return
            entry = ET.tostring(ET.Element("host", mac=mac, ip=address), encoding="unicode")
            net.update(
                libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1, entry, _AFFECT
            )
        if (
            self.network.bridge
            and shutil.which("dhcp_release")
            and Path("/sys/class/net", self.network.bridge).exists()
        ):
            # dnsmasq forgets the lease as if the guest had released it.
            subprocess.run(["dhcp_release", self.network.bridge, address, mac], check=False, capture_output=True)
        log.info("network=%s released %s of %s", self.network.name, address, mac)


def _hosts(net: libvirt.virNetwork) -> dict[str, str]:
    root = ET.fromstring(net.XMLDesc(0))
    return {h.get("mac", "").lower(): h.get("ip", "") for h in root.iterfind("ip/dhcp/host") if h.get("mac")}


def _leased(net: libvirt.virNetwork) -> set[str]:
    try:
        return {lease["ipaddr"] for lease in net.DHCPLeases() if lease.get("ipaddr")}
    except libvirt.libvirtError:
        return set()  # a driver without leases (test:///)


# --- keeping guests off the host -------------------------------------------------------------


class HostGuard:
    """iptables rules keeping a managed network's guests off the host but for what they
    need of it: DHCP, DNS, ICMP and the metadata service's port (and answers to
    connections the host opened, such as ssh to a guest). Everything else a guest sends
    to any of the host's addresses is rejected."""

    def __init__(self, bridge: str, meta_port: int | None) -> None:
        self.bridge = bridge
        self.meta_port = meta_port
        self.chain = f"NEBULA-IN-{bridge}"[:28]

    @staticmethod
    def available() -> bool:
        return shutil.which("iptables") is not None

    def _rules(self) -> list[list[str]]:
        rules = [
            ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
            ["-p", "udp", "--dport", "67", "-j", "ACCEPT"],
            ["-p", "udp", "--dport", "53", "-j", "ACCEPT"],
            ["-p", "tcp", "--dport", "53", "-j", "ACCEPT"],
            ["-p", "icmp", "-j", "ACCEPT"],
        ]
        if self.meta_port is not None:
            rules.append(["-p", "tcp", "--dport", str(self.meta_port), "-j", "ACCEPT"])
        rules += [
            ["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
            ["-j", "REJECT", "--reject-with", "icmp-port-unreachable"],
        ]
        return rules

    def install(self) -> None:
        """The chain with its rules, jumped to from INPUT for the bridge. Idempotent."""
        _iptables("-N", self.chain, check=False)
        _iptables("-F", self.chain)
        for rule in self._rules():
            _iptables("-A", self.chain, *rule)
        jump = ["INPUT", "-i", self.bridge, "-j", self.chain]
        if _iptables("-C", *jump, check=False) != 0:
            _iptables("-I", *jump[:1], "1", *jump[1:])
        log.info("guarding the host from bridge %s (%s)", self.bridge, self.chain)

    def remove(self) -> None:
        """Remove the jump and the chain. Idempotent."""
        jump = ["INPUT", "-i", self.bridge, "-j", self.chain]
        while _iptables("-C", *jump, check=False) == 0:
            _iptables("-D", *jump)
        _iptables("-F", self.chain, check=False)
        _iptables("-X", self.chain, check=False)

    def installed(self) -> list[str]:
        """The chain's rules as iptables lists them (empty: not installed)."""
        done = subprocess.run(["iptables", "-w", "-S", self.chain], capture_output=True, text=True, check=False)
        return done.stdout.splitlines() if done.returncode == 0 else []


def _iptables(*args: str, check: bool = True) -> int:
    done = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"iptables {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.returncode


def guard_host(network: GuestNetwork) -> HostGuard | None:
    """Install the host guard for a managed network whose bridge is on this host (not for
    the test driver's networks, nor where iptables is missing: said in the log)."""
    if network.name is None or not network.bridge or not Path("/sys/class/net", network.bridge).exists():
        return None
    if not HostGuard.available():
        log.warning("iptables is missing: guests on %s can reach every port of this host", network.bridge)
        return None
    meta = urlparse(network.meta_url)
    local_meta = network.gateway is not None and meta.hostname == network.gateway
    guard = HostGuard(network.bridge, (meta.port or 80) if local_meta else None)
    guard.install()
    return guard
