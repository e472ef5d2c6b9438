"""Model training: the autologged baseline, the Optuna search (and its distributed workers) and evaluation."""
