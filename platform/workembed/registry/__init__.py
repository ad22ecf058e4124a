"""The MLflow model registry: registration with lineage, the promotion gate, alias history and rollback.

MLflow is imported inside the functions (and :mod:`workembed.registry.pyfunc` only when a version is
logged), so importing this package does no I/O and stays light.
"""

from workembed.registry.config import CalibrationConfig, GateConfig, RegistryConfig
from workembed.registry.promotion import ConcurrentPromotion, PromotionRefused, promote, rollback
from workembed.registry.register import register_model
from workembed.registry.versions import list_versions, show_version

__all__ = [
    "CalibrationConfig",
    "ConcurrentPromotion",
    "GateConfig",
    "PromotionRefused",
    "RegistryConfig",
    "list_versions",
    "promote",
    "register_model",
    "rollback",
    "show_version",
]
