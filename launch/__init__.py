"""Launch: the configuration tree, the CLI and the driver loop."""
