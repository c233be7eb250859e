"""Prefect flows: thin tables of contents over the voxmill core (read → plan → fan out → collect → report)."""
