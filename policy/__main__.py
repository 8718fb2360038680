"""pve-lab classroom policy pack: `pulumi up -s <stack> --policy-pack policy --policy-pack-config <class>.policy.json`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the policies module next to this file

from policies import POLICIES  # noqa: E402
from pulumi_policy import EnforcementLevel, PolicyPack  # noqa: E402

PolicyPack(name="pve-lab-classroom", policies=POLICIES, enforcement_level=EnforcementLevel.MANDATORY)
