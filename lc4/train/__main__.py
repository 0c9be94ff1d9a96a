"""``python -m lc4.train CONFIG [options]`` (what ``accelerate launch -m lc4.train`` runs)."""
from .cli import main

raise SystemExit(main())
