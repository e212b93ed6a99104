"""Jobs mode: every run in the workspace's runs/, live."""
