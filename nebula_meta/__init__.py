"""The metadata service booting VMs talk to: the server half of cloud-init's NoCloud."""
