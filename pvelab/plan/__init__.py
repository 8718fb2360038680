"""`plan`: the whole lab offline, before touching a host (see model.build_plan)."""
