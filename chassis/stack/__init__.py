"""The stack file (chassis.toml): schema, validation, the example."""
