"""Thin entrypoints for ``ray job submit --working-dir . -- python -m ray_jobs.<job>``."""
