"""LabCredentials: the nested nodes' root password and SSH key pair, generated unless given in config."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_random as random
import pulumi_tls as tls

# Characters that survive every layer (cloud-init, PAM, the PVE web form) without quoting surprises.
PASSWORD_SPECIALS = "-_.+"


@dataclass
class LabCredentialsArgs:
    root_password: Optional[pulumi.Output[str]] = None
    ssh_private_key: Optional[pulumi.Output[str]] = None
    ssh_public_key: Optional[str] = None


class LabCredentials(pulumi.ComponentResource):
    root_password: pulumi.Output[str]
    ssh_private_key: pulumi.Output[str]
    ssh_public_key: pulumi.Output[str]

    def __init__(self, name: str, args: LabCredentialsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("pve-lab:index:LabCredentials", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        if args.root_password is not None:
            password = args.root_password
        else:
            generated = random.RandomPassword(
                f"{name}-root-password", length=24, special=True, override_special=PASSWORD_SPECIALS,
                min_lower=2, min_upper=2, min_numeric=2, opts=child,
            )
            password = generated.result
        if args.ssh_private_key is not None:
            private_key, public_key = args.ssh_private_key, pulumi.Output.from_input(args.ssh_public_key)
        else:
            key = tls.PrivateKey(f"{name}-ssh-key", algorithm="ED25519", opts=child)
            private_key, public_key = key.private_key_openssh, key.public_key_openssh
        # Marked secret here as well as by the providers: nothing downstream may print them.
        self.root_password = pulumi.Output.secret(password)
        self.ssh_private_key = pulumi.Output.secret(private_key)
        self.ssh_public_key = public_key.apply(lambda k: k.strip())
        self.register_outputs({"ssh_public_key": self.ssh_public_key})
