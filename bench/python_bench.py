"""The upstream PyTorch modules vs tokenmix.from_torch of them, called from Python the same way.

    make venv && make python-build
    PYTHONPATH=build/python/package .venv/bin/python bench/python_bench.py --threads 1 2

For every supported family (E=512, H=8; offline B=8 T=256 and B=1 T=4096) the real upstream module
(random weights) and its tokenmix layer are called alternately with the same arguments, under
torch.no_grad(), with the same thread count on both sides (torch.set_num_threads and
tokenmix.set_num_threads); medians over --repeats calls after one warm-up call each. Prints one row
per measurement with the speed-up (upstream ms / tokenmix ms) and the largest output difference.
"""
import argparse
import statistics
import time

import torch

import tokenmix

E, H = 512, 8
SHAPES = [(8, 256), (1, 4096)]


def modules():
    """(name, module, call(f, x)) for each family; x is (B, T, E)."""
    import continual as co
    from espnet2.asr.layers.fastformer import FastSelfAttention
    from espnet2.asr.state_spaces.attention import MultiHeadedAttention
    from labml_nn.transformers.mha import MultiHeadAttention
    from labml_nn.transformers.primer_ez import MultiDConvHeadAttention
    from speechbrain.lobes.models.transformer.hypermixing import HyperMixing

    def seq_first(f, x):
        x = x.transpose(0, 1).contiguous()
        return f(query=x, key=x, value=x)

    return [
        ("espnet_mha", MultiHeadedAttention(E, H), lambda f, x: f(x)[0]),
        ("fastformer", FastSelfAttention(E, H, 0.0), lambda f, x: f(x, None)),
        ("hypermixing", HyperMixing(E, 4 * E, num_heads=H, max_length=4096), lambda f, x: f(x, x, x)[0]),
        ("labml_mha", MultiHeadAttention(H, E, 0.0), seq_first),
        ("primer_ez", MultiDConvHeadAttention(H, E, 0.0), seq_first),
        ("continual_retro", co.RetroactiveMultiheadAttention(E, H, sequence_len=4096, batch_first=True),
         lambda f, x: f(x)[0]),
    ]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--filter", default="", help="only layers whose name contains this")
    a = p.parse_args()
    print(f"{'layer':<16}{'shape':<12}{'thr':>4}{'upstream_ms':>13}{'tokenmix_ms':>13}{'speed-up':>10}{'max|diff|':>11}")
    for threads in a.threads:
        torch.set_num_threads(threads)
        tokenmix.set_num_threads(threads)
        for name, module, call in modules():
            if a.filter not in name:
                continue
            module = module.eval()
            layer = tokenmix.from_torch(module)
            for B, T in SHAPES:
                x = torch.randn(B, T, E)
                with torch.no_grad():
                    expected, got = call(module, x), call(layer, x)  # warm-up (first-call allocations)
                    up, mine = [], []
                    for _ in range(a.repeats):
                        t = time.perf_counter()
                        call(module, x)
                        up.append(time.perf_counter() - t)
                        t = time.perf_counter()
                        call(layer, x)
                        mine.append(time.perf_counter() - t)
                u, m = 1e3 * statistics.median(up), 1e3 * statistics.median(mine)
                diff = (got - expected).abs().max().item()
                print(f"{name:<16}{f'B{B}_T{T}':<12}{threads:>4}{u:>13.2f}{m:>13.2f}{u / m:>9.2f}x{diff:>11.2e}",
                      flush=True)


if __name__ == "__main__":
    main()
