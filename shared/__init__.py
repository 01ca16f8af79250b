"""What the API and the workers both import: settings, schema, Redis keys, the SQL store."""

__version__ = "0.1.0"
