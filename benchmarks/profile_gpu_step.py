"""Where a GPU training step spends its time: the CUDA kernels of 10 DeepFM steps, by total time.

Runs the library's trainer eagerly (CUDA graphs off, so that the profiler sees each kernel) with
bfloat16 autocast and torch.compile, DeepFM dim 16, MLP 400x3, batch 8192, on a prepared dataset:

    python benchmarks/profile_gpu_step.py PREPARED_DIR

(bench_gpu.py --data-dir D writes one: D/criteo-shaped-ROWS). Prints the profiler's table.
"""

import sys

import torch
from torch.profiler import ProfilerActivity, profile

from embdim.config import TrainConfig
from embdim.data.dataset import PreparedDataset
from embdim.nn.models import ModelOptions, build_model
from embdim.train.trainer import Trainer, seed_everything

ds = PreparedDataset(sys.argv[1])
seed_everything(0)
model = build_model("deepfm", ds.schema, dim=16, options=ModelOptions(name="deepfm", mlp=[400, 400, 400]))
cfg = TrainConfig(batch_size=8192, epochs=1, max_steps_per_epoch=20, amp=True, compile=True,
                  device="cuda", cuda_graphs=False, log_every=100)
t = Trainer(model, ds, cfg, quiet=True)
t.train_epoch(0)
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    t.cfg.max_steps_per_epoch = 10
    t.train_epoch(1)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
