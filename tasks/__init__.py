"""Prefect tasks over the voxmill core: one task per batch of items, never one per item."""
