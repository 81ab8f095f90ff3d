"""SwiFT step time on CPU: forward and forward+backward, graph mode vs XLA.

Full paper config (1 x 96^3 x 20, batch 1), 2 intra-op threads by default, median of 5
after warm-up, peak RSS per mode, beside the upstream PyTorch reference measured on the
same kind of machine (research/swift.md section 8). No assertions: targets are <=0.25 s
forward and <=0.7 s forward+backward.

    python benchmarks/swift_step.py [--variant swift_paper] [--repeats 5] [--modes graph,xla]
"""

from step_timing import main

UPSTREAM = {"forward": "~1.2 s uncontended (median ~4 s), 1.24 GB",
            "forward+backward": "~2.7 s uncontended (median 4-9 s), 2.44 GB"}

if __name__ == "__main__":
    main("SwiFT step", "tfbrain.models.swift:SwiFT.backbone", "swift_paper", UPSTREAM)
