"""Operations against live PVE APIs: `preflight` (outer host), `status` (nested cluster), `drill` (HA failover).

All of it talks to the PVE HTTP API through proxmoxer (`api.py`): bounded retries of transient errors,
a deadline on every wait, and clean one-line errors instead of tracebacks. Secrets come from the
environment (pvelab.stackfile.SECRET_ENV), never from the command line.
"""
