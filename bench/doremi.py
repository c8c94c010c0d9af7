"""DoReMi on the sample web set's domains, then a mixture sampled to the weights it finds.

    python bench/doremi.py                          # the tiny preset (600 steps per model)
    python bench/doremi.py --max-steps 200          # quicker
    python bench/doremi.py --preset small --device cuda

Prints, per domain: its documents and share of the tokens (the baseline mixture the reference model trains
on) next to the DoReMi weights (the mean over every step, initial weights included, and the last step's),
the mean excess loss, and the two models' losses on fixed windows. Then the time per step of plain
training (the reference model: the baseline) and of a DoReMi proxy step (proxy forward and backward plus a
reference forward), and finally `thresher mix` to those weights: requested against achieved proportions.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from thresher.pipelines.engine.executor import run_stage

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "sample_data" / "web"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", type=Path, default=WEB, help="Shard set with a domain column.")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    parser.add_argument(
        "--max-steps", type=int, default=None, help="Steps of each model (default: preset's)."
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default).")
    parser.add_argument("--mix-tokens", type=int, default=500_000, help="Budget of the mix (proxy tokens).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--keep", type=Path, default=None, help="Write the outputs here instead of a temp dir."
    )
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="thresher-doremi-"))
    try:
        params = {"preset": args.preset, "device": args.device, "threads": args.threads or None}
        if args.max_steps:
            params["max_steps"] = args.max_steps
        start = time.perf_counter()
        manifest = run_stage(
            "reweight-doremi", params, args.input, work / "doremi", seed=args.seed, workers=1
        )
        wall = time.perf_counter() - start
        s = manifest.summary
        ref, proxy = s["reference"], s["proxy"]
        tokens = s["domain_tokens"]
        total = sum(tokens.values())
        print(
            f"DoReMi on {args.input} ({args.preset} preset, {ref['parameters']:,} parameters per model, "
            f"{proxy['steps']} proxy / {ref['steps']} reference steps, eta 1, c 1e-3, seed {args.seed})"
        )
        header = ("domain", "docs", "baseline", "doremi", "last step", "excess", "ref loss", "proxy loss")
        print("  ".join(f"{h:>10}" for h in header))
        for name in sorted(tokens):
            row = (
                name,
                f"{s['domain_docs'][name]:,}",
                f"{tokens[name] / total:.3f}",
                f"{s['weights'][name]:.3f}",
                f"{proxy['final_weights'][name]:.3f}",
                f"{proxy['mean_excess'][name]:.3f}",
                f"{proxy['reference_loss'][name]:.3f}",
                f"{proxy['proxy_loss'][name]:.3f}",
            )
            print("  ".join(f"{c:>10}" for c in row))
        ref_ms, proxy_ms = ref["seconds_per_step"] * 1000, proxy["seconds_per_step"] * 1000
        print(
            f"time per step: reference (plain LM training, the baseline) {ref_ms:.1f} ms, "
            f"DoReMi proxy {proxy_ms:.1f} ms ({proxy_ms / ref_ms:.2f}x); whole stage {wall:.1f} s"
        )

        mix = run_stage(
            "mix",
            {
                "weights": str(work / "doremi" / "domain_weights.json"),
                "tokenizer": str(work / "doremi" / "tokenizer.json"),
                "tokens": args.mix_tokens,
            },
            args.input,
            work / "mix",
            seed=args.seed,
            workers=1,
        ).summary
        print(f"mix: {mix['achieved']:,} of {mix['budget']:,} proxy tokens, max |achieved - requested| "
              f"{mix['max_weight_error']:.4f}; ran out: {', '.join(mix['ran_out']) or 'none'}")  # fmt: skip
        for name, d in mix["domains"].items():
            print(f"  {name:>10}  requested {d['requested_weight']:.3f}  achieved {d['achieved_weight']:.3f}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
