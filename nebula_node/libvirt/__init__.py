"""The node's libvirt: one module per fact.

- `domain_xml`: a Nebula guest's domain XML as typed elements (no I/O).
- `states`: libvirt's domain states and lifecycle events in the contract's words.
- `kvm`: whether guests get KVM or TCG.
- `media`: the host files a guest boots from and writes to (images, disks, console log).
- `errors`: `HypervisorError`, libvirt's or qemu-img's own failure.
- `driver`: `LibvirtDriver`, idempotent async operations on the domains this node made.
"""
