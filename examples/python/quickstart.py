"""tokenmix quick start: a trained upstream module, run by tokenmix with the same outputs.

    pip install .                  # from the tokenmix checkout (numpy is the only dependency)
    python examples/python/quickstart.py
Needs SpeechBrain for the module it starts from (pip install speechbrain); any supported module works
the same way (tokenmix.supported_modules() lists them).
"""
import time

import numpy as np
import torch
from speechbrain.lobes.models.transformer.hypermixing import HyperMixing  # speechbrain.nnet.hypermixing in 1.x

import tokenmix

module = HyperMixing(input_output_dim=256, hypernet_size=1024, num_heads=4, max_length=3000).eval()  # yours, trained
layer = tokenmix.from_torch(module)             # reads the constructor arguments and the state_dict

x = torch.randn(8, 400, 256)                    # (batch, time, d_model)
with torch.no_grad():
    t0 = time.perf_counter(); expected, _ = module(x, x, x); t1 = time.perf_counter()
    out, _ = layer(x, x, x)                     # the upstream forward signature, torch in -> torch out
    t2 = time.perf_counter()
print(f"max |tokenmix - torch| = {(out - expected).abs().max().item():.2e}; "
      f"torch {1e3 * (t1 - t0):.1f} ms, tokenmix {1e3 * (t2 - t1):.1f} ms")

tokenmix.save(module, "hypermixing.safetensors")  # one file: weights + module + config (C++ load_layer reads it)
layer = tokenmix.load("hypermixing.safetensors")

stream = layer.stream(batch=1, window=16)       # sliding-window streaming, state kept in the stream
chunks = np.split(x[:1].numpy(), 8, axis=1)     # 8 chunks of 50 frames
outputs = [stream.push(c) for c in chunks]      # each (1, C_out, 256); the first 15 frames warm up
print("streamed", sum(o.shape[1] for o in outputs), "outputs; state tensors:", sorted(stream.state()))
