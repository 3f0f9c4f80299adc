"""Demo data: the synthetic CRM behind `convert-leads generate`, with its regimes, reps and true effects."""
