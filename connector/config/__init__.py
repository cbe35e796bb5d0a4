"""Configuration: the settings model, read once from the environment; secrets and their masking."""
