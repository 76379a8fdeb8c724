"""Model of the time, memory and communication per rank of one fuse method (activation
cost, exact OT, joint stream map) for ViT-B/16 and BERT-base sized parents, at 64 to 1024
ranks and 2 to 64 parents, as tabulated in docs/SCALING.md. Every rate is an assumption
stated below (the compute rates were measured on the development machine by
bench/bench_fuse_scaling.sh); the output is an estimate, not a measurement.

    /usr/bin/python3 bench/scaling_model.py
"""
import math

# Assumed rates per core (compute: measured at d = 384 on the development machine; the
# network: a typical InfiniBand HDR node link shared by the ranks of a node).
FORWARD_FLOPS = 60e9     # forward pass, single-precision kernels
STATS_FLOPS = 25e9       # cross products (double dgemm) plus gathering
EXACT_SECONDS_N3 = 3.9e-10  # Jonker-Volgenant assignment, seconds per n^3 (fit at n = 1536)
ALIGN_FLOPS = 20e9       # dense plan products in the alignment
LINK_BYTES = 2.5e9       # bytes per second per rank (25 GB/s node link / 10 ranks)
MEMORY_BYTES = 5e9       # bytes per second per rank for the tree additions
CHUNK = 32               # calibration images per chunk
NODES = 2                # tree nodes a rank's chunk range leaves for the exchange (1 or 2)
CALIBRATION = 1024       # calibration images (inputs)

MODELS = {
    # d, f, L, tokens per sample, parameters
    "ViT-B/16 (224 px)": (768, 3072, 12, 197, 86e6),
    "BERT-base (128 tokens)": (768, 3072, 12, 128, 110e6),
}


def estimate(d, f, L, T, params, P, R, S=CALIBRATION):
    chunks = math.ceil(S / CHUNK)
    busy = min(R, chunks)               # ranks that own chunks
    per_rank = math.ceil(chunks / busy)  # chunks of the busiest rank
    forward = 2 * T * L * (4 * d * d + 2 * d * f) + 4 * T * T * d * L
    stats = 2 * T * (L * (7 * d * d + f * f) + 2 * d * d)
    t_forward = per_rank * CHUNK * P * forward / FORWARD_FLOPS
    t_stats = per_rank * CHUNK * (P - 1) * stats / STATS_FLOPS
    B = 8 * (P - 1) * (L * (7 * d * d + f * f + 4 * d + 2 * f) + 6 * d)  # statistics bytes
    depth = 4 + math.log2(max(per_rank, 1))
    # Reduce-scatter, then all-gather: a busy rank sends NODES tree nodes' worth of B
    # (every segment but its own), every rank receives and adds its segment of the busy
    # ranks' nodes, then receives the other segments of the result.
    sent = NODES * B * (R - 1) / R
    received = busy * NODES * B / R + B * (R - 1) / R
    t_reduce = (sent + received) / LINK_BYTES + busy * NODES * B / R / MEMORY_BYTES
    units = (P - 1) * (L + 1)
    unit_seconds = EXACT_SECONDS_N3 * (f ** 3 + 2 * d ** 3)  # one layer unit
    t_ot = max(math.ceil(units / R), 1) * unit_seconds
    plans = 8 * (P - 1) * (L * (6 * d * d + f * f) + 3 * d * d)
    t_bcast = 2 * plans / LINK_BYTES
    # Rank k mod R aligns the k-th non-anchor parent, then every aligned parent (4 bytes
    # per parameter) is broadcast to every rank.
    t_align = (math.ceil((P - 1) / R) * 2 * params * 2 * (d + f) / 2 / ALIGN_FLOPS
               + (P - 1) * 4 * params / LINK_BYTES)
    memory = 2 * P * 4 * params + depth * B + plans  # parents and aligned parents
    comm = sent + received + plans + (P - 1) * 4 * params
    stages = {"forward": t_forward, "statistics": t_stats, "reduction": t_reduce,
              "OT": t_ot, "plan broadcast": t_bcast, "alignment": t_align}
    return stages, memory, comm, busy, units


def table(name, d, f, L, T, params, S):
    print("### %s, %d calibration samples\n" % (name, S))
    print("| parents | ranks (with chunks) | forward | statistics | reduction | OT | plan bcast | "
          "alignment | total | memory/rank | comm/rank | bound |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for P in (2, 8, 64):
        for R in (64, 256, 1024):
            st, mem, comm, busy, units = estimate(d, f, L, T, params, P, R, S)
            total = sum(st.values())
            bound = max(st, key=st.get)
            print("| %d | %d (%d) | %s | %s | %s | %s | %s | %s | %s | %.0f GB | %.0f GB | %s |" % (
                P, R, busy, *("%.0f s" % st[k] for k in ("forward", "statistics", "reduction",
                                                          "OT", "plan broadcast", "alignment")),
                "%.0f s" % total, mem / 1e9, comm / 1e9, bound))
    print()


def main():
    for name, (d, f, L, T, params) in MODELS.items():
        table(name, d, f, L, T, params, CALIBRATION)
    name = "ViT-B/16 (224 px)"
    table(name, *MODELS[name], 32 * 1024)


if __name__ == "__main__":
    main()
