"""Run by Debian's own python3 with Debian's stock cloud-init (22.4, as in Debian 12):
give DataSourceNoCloudNet the SMBIOS serial a Nebula node writes, let it find and fetch
its seed exactly as it would in a booting VM, and print what it got as JSON.

Usage: /usr/bin/python3 cloudinit_probe.py '<smbios serial>' <scratch dir>
"""

import json
import sys

from cloudinit import dmi, helpers, util
from cloudinit.sources import DataSourceNoCloud

serial, scratch = sys.argv[1], sys.argv[2]
# The only two things a VM would supply: its DMI serial and its kernel command line.
dmi.read_dmi_data = lambda key: serial if key == "system-serial-number" else None
util.get_cmdline = lambda: "console=ttyS0"
paths = helpers.Paths({"cloud_dir": scratch, "run_dir": scratch, "seed_dir": scratch + "/seed"})
source = DataSourceNoCloud.DataSourceNoCloudNet(sys_cfg={}, distro=None, paths=paths)
found = source.get_data()
print(
    json.dumps(
        {
            "found": bool(found),
            "metadata": source.metadata,
            "userdata_raw": (source.userdata_raw or b"").decode()
            if isinstance(source.userdata_raw, bytes)
            else source.userdata_raw,
            "instance_id": source.get_instance_id() if found else None,
            "hostname": source.metadata.get("local-hostname") if found else None,
            "vendordata_raw": source.vendordata_raw.decode()
            if isinstance(source.vendordata_raw, bytes)
            else source.vendordata_raw,
            "network_config": source._network_config if found else None,
        }
    )
)
