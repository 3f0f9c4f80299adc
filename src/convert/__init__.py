"""convert: lead conversion scoring."""
