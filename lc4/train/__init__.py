"""Two-stage L-C4 training (seed Sec. 3.5): ``lc4 train CONFIG`` or, on several GPUs or
machines, ``accelerate launch -m lc4.train CONFIG``. See :mod:`lc4.train.config` for the
configuration and :mod:`lc4.train.loop` for the loop."""
from .config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config", "train"]


def train(config, resume=None, stop_after=None):
    from .loop import train as _train
    return _train(config, resume=resume, stop_after=stop_after)
