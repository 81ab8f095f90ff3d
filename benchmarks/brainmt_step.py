"""BrainMT step time and peak memory on CPU: forward and forward+backward.

Default `brainmt_small` (the parity fixture's config: 1 x 91 x 109 x 91 x 4 frames, embed 512,
depths 2-2, L = 1,009 tokens, 15.7M parameters), batch 1, 2 intra-op threads by default. The
paper config (`brainmt_paper`, T = 200, L = 50,401) is GPU-sized: see brainmt_memory.py.
Beside the upstream PyTorch reference (the fixture's JSON: torch 2.13 CPU, reference scan,
1 thread, forward only). No assertions.

    python benchmarks/brainmt_step.py [--variant brainmt_small] [--repeats 3]
"""

from step_timing import main

UPSTREAM = {"forward": "2.36 s (1 thread)", "forward+backward": "not measured"}

if __name__ == "__main__":
    main("BrainMT step", "tfbrain.models.brainmt:BrainMT.backbone", "brainmt_small", UPSTREAM,
         repeats=3)
