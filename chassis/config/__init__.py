"""Configuration names shared by CLI options and the service layer."""
