"""Typed, validated configuration: schema, YAML loading with overrides, saving."""
