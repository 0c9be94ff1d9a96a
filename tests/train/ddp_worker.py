"""Run by the two-process test under torchrun: trains, then saves this rank's weights."""
import os
import sys
from pathlib import Path

import torch

from lc4.train import load_config, train

torch.set_num_threads(1)
config = load_config(sys.argv[1])
result = train(config)
rank = int(os.environ["RANK"])
torch.save({k: v.detach().clone() for k, v in result.denoiser.state_dict().items()},
           Path(config.output_dir) / f"weights-rank{rank}.pt")
