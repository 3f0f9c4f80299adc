"""The model: training design (cross-fitting), LightGBM bundle, calibration, baselines, metrics, leakage guard, TreeSHAP and explanations."""
