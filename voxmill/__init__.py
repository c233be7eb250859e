"""voxmill core: catalogue, client, manifests, ledger, audio, local server. Imports no Prefect."""

from voxmill.catalog import MODELS, ValidatedRequest, get_model, validate
from voxmill.errors import (
    AuthError,
    BadResponse,
    ConfigError,
    InvalidItem,
    RateLimited,
    TransientError,
    ValidationError,
    VoxmillError,
)
from voxmill.settings import ApiKey, RateLimit, RetryPolicy, Settings, Timeouts

__all__ = [
    "MODELS",
    "ApiKey",
    "AuthError",
    "BadResponse",
    "ConfigError",
    "InvalidItem",
    "RateLimit",
    "RateLimited",
    "RetryPolicy",
    "Settings",
    "Timeouts",
    "TransientError",
    "ValidatedRequest",
    "ValidationError",
    "VoxmillError",
    "get_model",
    "validate",
]
