"""Prefect flows and the command-line interface: thin orchestration over ``pipeline`` and ``storage``."""
