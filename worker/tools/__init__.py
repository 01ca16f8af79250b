"""Tools the assistant can call: declared in a config file, run by kind."""
