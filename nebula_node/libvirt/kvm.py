"""Whether guests get KVM or QEMU's TCG emulation: KVM only when the operator asked for
it and /dev/kvm really works."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable

from nebula_node.libvirt.domain_xml import DomainType

log = logging.getLogger("nebula.node.kvm")

#: _IO(KVMIO, 0x00): every working KVM answers 12.
KVM_GET_API_VERSION = 0xAE00


def kvm_usable(device: str = "/dev/kvm") -> bool:
    """True if `device` opens read-write and answers KVM's API version ioctl."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, KVM_GET_API_VERSION) == 12
    except OSError:
        return False
    finally:
        os.close(fd)


def choose_domain_type(kvm: bool, *, probe: Callable[[], bool] = kvm_usable) -> DomainType:
    """`kvm` only when it was asked for and the device works; TCG otherwise.

    KVM is opt-in: on some hosts /dev/kvm opens and answers but guests hang, and TCG is
    slow but always boots.
    """
    if not kvm:
        return "qemu"
    if probe():
        return "kvm"
    log.warning("KVM was asked for but /dev/kvm does not work: using QEMU's TCG emulation")
    return "qemu"
