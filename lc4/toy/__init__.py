"""The toy L-C4: a generated text-video domain, its tiny model, training recipe, evaluation and
demo (`python -m lc4.toy --help`)."""
