"""Pulumi components of the lab: one component per module (see README "Code map")."""
