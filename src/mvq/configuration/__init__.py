"""A whole config: its typed sections and the one loader that reads, overrides and checks them."""
