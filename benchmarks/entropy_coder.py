"""Speed and size of the bottleneck's entropy coder: splitdnn.rans (its numba and numpy kernels,
both run on the arm64 head) at several lane counts against constriction's ANS coder (Rust;
x86_64 wheels only).

The symbols are a stand-in for a trained entropy student's bottleneck: 48 channels at 17x17
(Lite2 at ``_blocks.10``), each channel drawn from its own two-sided geometric distribution
over 24 symbols (narrower with the channel index), coded with its quantised table. Every
coder must decode the symbols exactly, and the two kernels of splitdnn.rans must write the
same bytes; the best of ``--repeats`` runs is reported (the numba kernels warmed up first).

    python -m benchmarks.entropy_coder [--repeats 7]

Writes ``benchmarks/results/entropy_coder.{json,md,png}`` (``benchmarks/report.py``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import RESULTS, conditions, figure, table, write_results
from splitdnn import rans

SHAPE = (48, 17, 17)
ALPHABET = 24
#: The fewest lanes the envelope allows for this shape (each stream at most rans.MAX_STEPS
#: steps: a receiver's bound on its work), and more.
LANES = tuple(sorted({rans.lanes_for(int(np.prod(SHAPE))), 32, 64}))


def stand_in(seed: int = 0) -> tuple[rans.CodingTables, np.ndarray, list[np.ndarray]]:
    """Tables, symbols and the quantised probabilities they were drawn from."""
    rng = np.random.default_rng(seed)
    cdfs, probabilities = [], []
    for c in range(SHAPE[0]):
        p = np.exp(-np.abs(np.arange(ALPHABET) - 6) * (0.4 + 0.08 * c))
        freq = np.maximum(1, np.round(p / p.sum() * (rans._TOTAL - ALPHABET))).astype(np.int64)
        freq[np.argmax(freq)] += rans._TOTAL - freq.sum()
        cdfs.append([0, *np.cumsum(freq).tolist()])
        probabilities.append(freq / rans._TOTAL)
    tables = rans.CodingTables.from_lists([0.0] * SHAPE[0], [-6] * SHAPE[0], cdfs)
    symbols = np.stack(
        [rng.choice(ALPHABET, size=SHAPE[1:], p=p) - 6 for p in probabilities]
    ).astype(np.int32)
    return tables, symbols, probabilities


def best_ms(run: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    return out, 1000 * min(times)


def measure(repeats: int) -> dict[str, Any]:
    tables, symbols, probabilities = stand_in()
    information = sum(
        -np.log2(p[s.ravel() + 6]).sum() for p, s in zip(probabilities, symbols, strict=True)
    )
    rows = []
    rans.warm_up()
    for kernel in rans.kernels():
        for lanes in LANES:
            stream, encode_ms = best_ms(
                lambda lanes=lanes, k=kernel: rans.encode(symbols, tables, lanes, kernel=k),
                repeats,
            )
            decoded, decode_ms = best_ms(
                lambda lanes=lanes, stream=stream, k=kernel: rans.decode(
                    stream, SHAPE, tables, lanes, kernel=k
                ),
                repeats,
            )
            assert np.array_equal(decoded, symbols)
            same = stream == rans.encode(symbols, tables, lanes, kernel="numpy")
            rows.append(
                {"coder": f"splitdnn.rans, {lanes} lanes ({kernel})", "bytes": len(stream),
                 "encode_ms": encode_ms, "decode_ms": decode_ms, "same_bytes_as_numpy": same}
            )  # fmt: skip
    try:
        import constriction
    except ImportError:
        constriction = None
    if constriction is not None:
        models = [
            constriction.stream.model.Categorical(p.astype(np.float64), perfect=False)
            for p in probabilities
        ]

        def encode() -> np.ndarray:
            coder = constriction.stream.stack.AnsCoder()
            for c in range(SHAPE[0] - 1, -1, -1):
                coder.encode_reverse((symbols[c].ravel() + 6).astype(np.int32), models[c])
            return coder.get_compressed()

        compressed, encode_ms = best_ms(encode, repeats)

        def decode() -> np.ndarray:
            coder = constriction.stream.stack.AnsCoder(compressed)
            n = SHAPE[1] * SHAPE[2]
            return np.stack([coder.decode(m, n).reshape(SHAPE[1:]) - 6 for m in models])

        decoded, decode_ms = best_ms(decode, repeats)
        assert np.array_equal(decoded, symbols)
        rows.append(
            {"coder": "constriction ANS (Rust, x86_64 wheels only)",
             "bytes": int(compressed.nbytes), "encode_ms": encode_ms, "decode_ms": decode_ms,
             "same_bytes_as_numpy": None}
        )  # fmt: skip
    return {"shape": list(SHAPE), "information_bytes": information / 8, "coders": rows}


def write_report(result: dict[str, Any], out: Path) -> None:
    lines = [
        "# Entropy coder: bytes and time for one 48x17x17 bottleneck (stand-in symbols)",
        "",
        f"Information content {result['information_bytes']:,.0f} bytes; best of "
        f"{result['repeats']} runs, one thread.",
        "",
        *table(
            ["coder", "bytes", "encode ms", "decode ms", "same bytes as numpy"],
            (
                [
                    r["coder"],
                    f"{r['bytes']:,}",
                    f"{r['encode_ms']:.2f}",
                    f"{r['decode_ms']:.2f}",
                    {True: "yes", False: "NO", None: "–"}[r["same_bytes_as_numpy"]],
                ]
                for r in result["coders"]
            ),
        ),
    ]
    write_results("entropy_coder", result, lines, out, plot)


def plot(result: dict[str, Any], path: Path) -> None:
    with figure(path, figsize=(7, 1 + 0.5 * len(result["coders"]))) as (_, ax):
        names = [r["coder"].replace(" (Rust, x86_64 wheels only)", "") for r in result["coders"]]
        y = np.arange(len(names))
        ax.barh(y - 0.2, [r["encode_ms"] for r in result["coders"]], 0.4, label="encode")
        ax.barh(y + 0.2, [r["decode_ms"] for r in result["coders"]], 0.4, label="decode")
        ax.set_yticks(
            y, [f"{n}\n{r['bytes']:,} B" for n, r in zip(names, result["coders"], strict=True)]
        )
        ax.set_xscale("log")  # numba and Rust are ~20x faster than numpy
        ax.set_xlabel("ms per bottleneck (best run, this host; log scale)")
        ax.legend()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = {"conditions": conditions(), "repeats": args.repeats, **measure(args.repeats)}
    write_report(result, args.out)
    print((args.out / "entropy_coder.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
