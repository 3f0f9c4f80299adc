"""Legacy name of :mod:`convert.registry.pyfunc`.

Models registered before the registry became a sub-package name ``convert.mlflow_model`` as
their MLflow ``loader_module``; this alias keeps them loadable. New models name
``convert.registry.pyfunc``.
"""

from convert.registry.pyfunc import LeadScoringPyfunc, _load_pyfunc

__all__ = ["LeadScoringPyfunc", "_load_pyfunc"]
