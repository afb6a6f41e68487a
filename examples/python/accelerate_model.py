"""A whole model from upstream packages, accelerated: every supported submodule swapped for tokenmix.

Builds, with random weights, SpeechBrain's HyperConformer encoder (TransformerASR with
attention_type="hypermixing") and ESPnet's Branchformer encoder with Fastformer attention
(attention_layer_type="fast_selfattn"), runs a batch through PyTorch and through
tokenmix.torch.accelerate(model), and prints the largest difference and both times.

    python examples/python/accelerate_model.py [--threads N]
"""
import argparse
import time

import torch

import tokenmix
import tokenmix.torch


def timed(fn, repeats=5):
    fn()  # warm-up (first-call allocations)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best * 1e3


def compare(name, model, run):
    with torch.no_grad():
        expected, t_torch = timed(run)
        replaced = tokenmix.torch.accelerate(model)
        actual, t_tokenmix = timed(run)
    diff = (actual - expected).abs().max().item()
    print(f"{name}: replaced {len(replaced)} modules ({type(next(iter(replaced.values()))).__name__}); "
          f"max |diff| {diff:.2e} (output max {expected.abs().max().item():.1f}); "
          f"PyTorch {t_torch:.1f} ms, tokenmix {t_tokenmix:.1f} ms ({t_torch / t_tokenmix:.2f}x)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="threads for PyTorch and tokenmix alike")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tokenmix.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(8, 250, 80)  # (batch, frames, features)

    from speechbrain.lobes.models.transformer.TransformerASR import TransformerASR

    asr = TransformerASR(input_size=80, tgt_vocab=100, d_model=256, nhead=4, num_encoder_layers=6,
                         num_decoder_layers=0, d_ffn=1024, attention_type="hypermixing",
                         encoder_module="conformer", normalize_before=True).eval()
    compare("SpeechBrain HyperConformer encoder", asr, lambda: asr.encode(x))

    from espnet2.asr.encoder.branchformer_encoder import BranchformerEncoder

    enc = BranchformerEncoder(80, output_size=256, attention_heads=4, attention_layer_type="fast_selfattn",
                              num_blocks=6, input_layer="linear", pos_enc_layer_type="abs_pos",
                              rel_pos_type="latest", cgmlp_linear_units=1024).eval()
    lengths = torch.tensor([250, 240, 230, 220, 210, 200, 190, 180])
    compare("ESPnet Branchformer encoder (Fastformer)", enc, lambda: enc(x, lengths)[0])


if __name__ == "__main__":
    main()
