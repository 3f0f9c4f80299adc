"""One function per command: open the source, call the core, log, register and write back.

Steps do the input and output (files, MLflow, databases) around the pure core, and return
typed results the CLI prints. Every step takes a CRM export or a flat table alike (through
:class:`convert.sources.base.LeadSource`) and timestamps already parsed (the CLI and the
public API parse text at the boundary). A notebook or a DVC pipeline can call them just as
the CLI does: ``from convert import steps; steps.train_step(...)``.
"""

from convert.steps.allocate import AllocateSummary, allocate_step
from convert.steps.backtest import backtest_step
from convert.steps.common import Echo, Input, load_data, open_data, resolve_target, user_error
from convert.steps.evaluate import EvaluationSummary, evaluate_step, own_holdout
from convert.steps.explain import explain_step
from convert.steps.export import export_step
from convert.steps.features import FeaturesSummary, features_step
from convert.steps.generate import generate_step
from convert.steps.promote import promote_step
from convert.steps.report import ReportSummary, report_step
from convert.steps.score import ScoreSummary, score_step, top_leads, top_table
from convert.steps.train import (
    TrainSummary,
    champion_comparison,
    global_importance,
    screen_attributes,
    summary_record,
    train_from_set_step,
    train_step,
)
from convert.steps.validate import ValidationSummary, validate_step

__all__ = [
    "AllocateSummary",
    "Echo",
    "EvaluationSummary",
    "FeaturesSummary",
    "Input",
    "ReportSummary",
    "ScoreSummary",
    "TrainSummary",
    "ValidationSummary",
    "allocate_step",
    "backtest_step",
    "champion_comparison",
    "evaluate_step",
    "explain_step",
    "export_step",
    "features_step",
    "generate_step",
    "global_importance",
    "load_data",
    "open_data",
    "own_holdout",
    "promote_step",
    "report_step",
    "resolve_target",
    "score_step",
    "screen_attributes",
    "summary_record",
    "top_leads",
    "top_table",
    "train_from_set_step",
    "train_step",
    "user_error",
    "validate_step",
]
