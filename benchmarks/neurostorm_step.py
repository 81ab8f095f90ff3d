"""NeuroSTORM step time and peak memory on CPU: forward and forward+backward.

Full released config (`neurostorm_paper`: 1 x 96^3 x 20, embed 36, depths 2-2-6-2, 5.17M
parameters), batch 1, 2 intra-op threads by default. In `graph` mode the selective scans
run in their own XLA loops (jit "auto"); `xla` compiles the whole step. Beside the upstream
PyTorch reference (research/mamba.md section 4: reference scan, 1 thread, forward only).
No assertions.

    python benchmarks/neurostorm_step.py [--variant neurostorm_paper] [--repeats 3]
"""

from step_timing import main

UPSTREAM = {"forward": "9.7 s (1 thread), 1.84 GB", "forward+backward": "not measured"}

if __name__ == "__main__":
    main("NeuroSTORM step", "tfbrain.models.neurostorm:NeuroSTORM.backbone", "neurostorm_paper",
         UPSTREAM, repeats=3)
