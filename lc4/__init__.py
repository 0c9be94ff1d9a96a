"""lc4: L-C4 language-guided video colorization (model layer, pipeline, training, evaluation)."""
