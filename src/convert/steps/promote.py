"""``convert-leads promote``: move the champion alias to the challenger when it wins."""

from __future__ import annotations

from convert.config import Config
from convert.registry.store import Promotion


def promote_step(config: Config, model_name: str | None = None) -> Promotion:
    """Compare challenger and champion on the rows both were judged on (``promotion`` settings)."""
    from convert.registry import store as registry

    return registry.promote(model_name or config.train.model_name, config.promotion.metric,
                            config.promotion.min_improvement)
