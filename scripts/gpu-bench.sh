#!/usr/bin/env bash
# The GPU section of docs/BENCHMARKS.md in one device session: the GPU tests, `virnucpro doctor`,
# our attention op against PyTorch's SDPA in alternating pairs, the PyTorch baselines
# (scripts/bench_torch.py), `predict` on generated coding genomes (ESM2-650M and ESM2-3B shapes,
# random weights) with the peak GPU memory, and `bench` rows. See docs/GPU.md, "Reproducing the
# GPU figures".
#
#   scripts/gpu-bench.sh pack [CARRY_DIR]    # here, from the repository root: build, fill .gpu-carry/
#   scripts/gpu-bench.sh run [CARRY_DIR]     # on the GPU machine, from the repository root
#
# `pack` builds (release, --features cuda; `source scripts/cuda-toolkit.sh` first where there is
# no CUDA toolkit) and puts in CARRY_DIR (default .gpu-carry, git-ignored): the stripped binary,
# the GPU test binaries (the kernels crate's unit tests; the integration tests, whose `gpu_parity::`
# ones `run` runs), the genome generator (examples/gen_genome.rs) and a 4-mer DNABERT
# tokenizer directory (examples/kmer_tokenizer.rs), binaries xz-compressed when xz is there.
# `run` needs the repository's tracked files (tests/data for the parity tests,
# scripts/bench_torch.py), Python with torch + transformers for the baseline, nvidia-smi, and the
# CUDA 13 runtime libraries (taken from the torch install, nvidia.cu13, when present).
#
# `run` writes at most 9 files under $OUT (default /tmp/virnucpro-gpu-out): tests.log (machine
# and GPU tests), doctor.log, doctor.json, attn.log, torch.log, torch.json, predict.log,
# bench.log, checks.log (subbatch, invariance, resume, multi, oom), and ends its output with a
# summary.
# Environment:
#   STEPS    steps in order (default "tests doctor torch predict attn large bench"; also
#            invariance, resume, multi, oom, which check large-run behaviour on the GPU):
#            tests   lib_tests --ignored (the kernels crate's unit tests), integration
#                    gpu_parity:: --ignored (oracle parity on the GPU)
#            doctor  virnucpro doctor --device cuda (ENV-01..05, model timings)
#            torch   bench_torch.py --quick (SDPA, EsmModel, MosaicBERT/BertModel baselines)
#            predict predict --random-weights esm2-650m on RECORDS coding genomes, 3 runs, peak memory
#            attn    PAIRS more pairs doctor --skip-models / bench_torch.py --skip-models, alternating
#            large   predict --random-weights esm2-3b on RECORDS_3B genomes, 2 runs, peak memory
#            bench   bench esm2-3b (fused vs naive) and bench --ops esm2-650m
#            subbatch  predict (esm2-3b) with whole padded batches and with 512 MiB sub-batches
#                    (VIRNUCPRO_SUB_BATCH_MIB), alternating, 2 runs each: speed, peak memory,
#                    files identical
#            pool    predict (POOL_SHAPES) under each memory-pool policy of POOL_VARIANTS (after a
#                    first default run that warms the machine, and a default run last): speed,
#                    peak memory, the pool's use after the first groups, files identical
#            invariance  predict (esm2-650m) with three --batch-tokens: files must be identical
#            resume  predict (esm2-650m) killed with -9 halfway, rerun: files identical to an
#                    uninterrupted run, the log names the reused units
#            multi   several GPUs (issue 23's kinds): predict (MULTI_SHAPE) on one GPU and with
#                    --device cuda:all, then one process per GPU with --shard I/N + merge, then
#                    cuda:all with a GPU made to fail (VIRNUCPRO_TEST_FAIL_DEVICE): wall times,
#                    scaling, files compared with the one-GPU run
#            oom     predict (esm2-3b) with a huge --batch-tokens, once with out-of-memory
#                    failures injected (VIRNUCPRO_TEST_OOM_TOKENS) and once with the GPU's memory
#                    nearly all taken by another process: files identical to the default budget
#   BUDGET   seconds the whole run may take (default 570: one device command is limited to 600);
#            a step that would not fit is skipped, and the summary says how to run it
#   PAIRS (2), RECORDS (4000: ~40 000 frames), RECORDS_3B (1000), RUNS (3), RUNS_3B (2),
#   RECORDS_CHECK (1000: the genome of invariance/resume), RECORDS_OOM (400), HOG_FREE_MB (9000:
#   what the memory hog of `oom` leaves free), RECORDS_MULTI (32000: ~320 000 frames),
#   MULTI_SHAPE (esm2-650m), POOL_SHAPES (esm2-3b), POOL_VARIANTS ("dna256 pfirst dna256-pfirst
#   default"; each a name the pool step knows: dna256, dna128, sub512, pfirst, dna256-pfirst, default)
set -u

die() { echo "gpu-bench.sh: $*" >&2; exit 1; }

pack() {
    local carry=${1:-.gpu-carry}
    [ -f Cargo.toml ] || die "run from the repository root"
    cargo build --release --locked --features cuda || die "cuda build failed (source scripts/cuda-toolkit.sh first?)"
    # The examples use no CUDA; built with the same features they reuse the build above.
    cargo build --release --locked --features cuda --examples || die "examples build failed"
    # The test binaries' paths, as cargo reports them: the kernels crate's unit tests (the GPU ones
    # are #[ignore]d), "Executable unittests src/lib.rs (.../virnucpro_kernels-HASH)" (each crate's
    # src/lib.rs is named relative to the crate), and the root package's integration tests
    # (tests/integration.rs, one binary; the GPU ones are its gpu_parity:: module).
    local built
    built=$(cargo test --release --locked --features cuda -p virnucpro-kernels -p virnucpro \
        --lib --test integration --no-run 2>&1) \
        || { echo "$built" >&2; die "test build failed"; }
    local lib_tests integration
    lib_tests=$(echo "$built" \
        | sed -n 's/.*Executable unittests src\/lib.rs (\(.*\/virnucpro_kernels-[^)]*\))$/\1/p')
    integration=$(echo "$built" | sed -n 's/.*Executable tests\/integration.rs (\(.*\))$/\1/p')
    local target
    target=$(cargo metadata --format-version 1 --no-deps | grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
    local rel="$target/release"
    [ -x "$rel/virnucpro" ] && [ -x "$lib_tests" ] && [ -x "$integration" ] || die "missing build outputs in $rel"
    rm -rf "$carry" && mkdir -p "$carry"
    strip -o "$carry/virnucpro" "$rel/virnucpro"
    strip -o "$carry/lib_tests" "$lib_tests"
    strip -o "$carry/integration" "$integration"
    strip -o "$carry/gen_genome" "$rel/examples/gen_genome"
    "$rel/examples/kmer_tokenizer" tests/data/oracle/dnabert "$carry/kmer" || die "kmer tokenizer"
    if command -v xz > /dev/null; then
        xz -T0 -6 "$carry/virnucpro" "$carry/lib_tests" "$carry/integration"
    fi
    du -sh "$carry"
    ls -l "$carry"
    echo "carry $carry (64 MiB at most); on the GPU machine: bash scripts/gpu-bench.sh run $carry"
}

# ------------------------------------------------------------------------------------------------

unpack() {  # CARRY/NAME[.xz] -> /tmp/virnucpro-bin/NAME
    local src=$1/$2 dst=/tmp/virnucpro-bin/$2
    mkdir -p /tmp/virnucpro-bin
    if [ -f "$src" ]; then
        cp "$src" "$dst"
    elif [ -f "$src.xz" ]; then
        if command -v xz > /dev/null; then
            xz -dc "$src.xz" > "$dst"
        else
            python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$src.xz" "$dst"
        fi
    else
        return 1
    fi
    chmod +x "$dst"
}

# Seconds of BUDGET left (at least 1: `timeout 0` would mean no limit).
left() {
    local l=$((BUDGET - SECONDS))
    echo $((l > 0 ? l : 1))
}

# Runs step $1 if about $2 seconds remain, else records it as skipped.
fits() {
    if [ "$(left)" -lt "$2" ]; then
        SKIPPED="$SKIPPED $1"
        echo "== $1: skipped ($(left) s of BUDGET left, needs ~$2 s)"
        return 1
    fi
    echo "== $1 ($(date -u +%H:%M:%S), $(left) s left)"
}

# Runs "$@", sampling the GPU's used memory every 200 ms; appends the command's last output line
# (predict's summary), the memory pool's high-water marks where `-v` logged them, and
# "peak memory.used N MiB" to LOG.
with_peak_memory() {
    local log=$1
    shift
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > /tmp/virnucpro-mem.csv 2> /dev/null &
    local mon=$!
    "$@" > /tmp/virnucpro-cmd.log 2>&1
    local rc=$?
    kill "$mon" 2> /dev/null
    wait "$mon" 2> /dev/null
    tail -n 1 /tmp/virnucpro-cmd.log >> "$log"
    grep -o "device memory at its highest.*" /tmp/virnucpro-cmd.log >> "$log"
    echo "peak memory.used $(sort -n /tmp/virnucpro-mem.csv | tail -n 1) MiB (exit $rc)" >> "$log"
}

# Whether two output directories hold the same result files, byte for byte.
same_results() {
    local f
    for f in prediction_results.txt prediction_results_highestscore.csv prediction_summary.tsv; do
        cmp -s "$1/$f" "$2/$f" || { echo "DIFFERENT ($f)"; return 1; }
    done
    echo "identical"
}

# Finished work units in a journal (entries [u32 len][u8 kind][payload][u64 sum]; kind 2).
journal_units() {
    python3 - "$1" << 'PY' 2> /dev/null || echo 0
import struct, sys
b = open(sys.argv[1], "rb").read()
at, n = 16, 0
while at + 5 <= len(b):
    (size,) = struct.unpack_from("<I", b, at)
    if at + 5 + size + 8 > len(b):
        break
    n += b[at + 4] == 2
    at += 5 + size + 8
print(n)
PY
}

genome() {  # RECORDS -> path of a generated coding genome
    local g=/tmp/virnucpro-genome-$1.fa
    [ -s "$g" ] || "$B/gen_genome" --coding "$g" "$1" 5 > /dev/null 2>&1
    echo "$g"
}

predict_cmd() {  # SHAPE GENOME OUTDIR [extra...]
    local shape=$1 g=$2 o=$3
    shift 3
    echo "$V" predict "$g" --chunk-len 500 --random-weights "$shape" --dnabert "$CARRY/kmer" \
        --out-dir "$o" --device cuda "$@"
}

predict_runs() {  # SHAPE RECORDS RUNS LOG
    local shape=$1 records=$2 runs=$3 log=$4 genome=/tmp/virnucpro-genome-$2.fa
    [ -s "$genome" ] || "$B/gen_genome" --coding "$genome" "$records" 5 2>> "$log"
    local r
    for r in $(seq 1 "$runs"); do
        echo "-- predict --random-weights $shape, $records records, run $r" >> "$log"
        with_peak_memory "$log" timeout "$(left)" "$V" -v predict "$genome" --chunk-len 500 \
            --random-weights "$shape" --dnabert "$CARRY/kmer" --out-dir "/tmp/virnucpro-o-$shape-$r" \
            --device cuda
    done
}

run() {
    CARRY=$(cd "${1:-.gpu-carry}" && pwd) || die "no carry directory ${1:-.gpu-carry}"
    [ -f scripts/bench_torch.py ] || die "run from the repository root"
    OUT=${OUT:-/tmp/virnucpro-gpu-out}
    STEPS=${STEPS:-tests doctor torch predict attn large bench}
    BUDGET=${BUDGET:-570}
    PAIRS=${PAIRS:-2}
    RECORDS=${RECORDS:-4000}
    RECORDS_3B=${RECORDS_3B:-1000}
    RUNS=${RUNS:-3}
    RUNS_3B=${RUNS_3B:-2}
    RECORDS_CHECK=${RECORDS_CHECK:-1000}
    RECORDS_OOM=${RECORDS_OOM:-400}
    HOG_FREE_MB=${HOG_FREE_MB:-9000}
    RECORDS_MULTI=${RECORDS_MULTI:-32000}
    MULTI_SHAPE=${MULTI_SHAPE:-esm2-650m}
    POOL_SHAPES=${POOL_SHAPES:-esm2-3b}
    POOL_VARIANTS=${POOL_VARIANTS:-dna256 pfirst dna256-pfirst default}
    SKIPPED=""
    mkdir -p "$OUT"
    if python3 -c 'import nvidia.cu13' 2> /dev/null; then
        local cu13
        cu13=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
        export LD_LIBRARY_PATH="$cu13${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    B=/tmp/virnucpro-bin
    unpack "$CARRY" virnucpro || die "no virnucpro in $CARRY"
    unpack "$CARRY" gen_genome || die "no gen_genome in $CARRY"
    V=$B/virnucpro
    export PYTHONUNBUFFERED=1
    {
        date -u '+%Y-%m-%d %H:%M:%S UTC'
        uname -m
        nproc
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv
        "$V" --version
        python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' 2>&1
    } > "$OUT/tests.log" 2>&1
    local step
    for step in $STEPS; do
        case $step in
        tests)
            fits tests 60 || continue
            if unpack "$CARRY" lib_tests && unpack "$CARRY" integration; then
                timeout 150 "$B/lib_tests" --ignored --test-threads 1 2>&1 \
                    | grep -E "^test |test result|panicked|assert" >> "$OUT/tests.log"
                CARGO_MANIFEST_DIR=$PWD VIRNUCPRO_BIN=$V timeout 200 "$B/integration" gpu_parity:: \
                    --ignored --test-threads 1 --nocapture 2>&1 \
                    | grep -E "cosine|score diff|^test |test result|panicked" >> "$OUT/tests.log"
            else
                echo "no test binaries in $CARRY" >> "$OUT/tests.log"
            fi
            ;;
        doctor)
            fits doctor 90 || continue
            timeout "$(left)" "$V" doctor --device cuda --json "$OUT/doctor.json" > "$OUT/doctor.log" 2>&1
            echo "doctor exit $?" >> "$OUT/doctor.log"
            ;;
        torch)
            fits torch 120 || continue
            timeout "$(left)" python3 scripts/bench_torch.py --quick --out "$OUT/torch.json" > "$OUT/torch.log" 2>&1
            echo "bench_torch exit $?" >> "$OUT/torch.log"
            ;;
        predict)
            fits predict 100 || continue
            # The first run includes the driver's JIT compilation on a fresh machine.
            predict_runs esm2-650m "$RECORDS" "$RUNS" "$OUT/predict.log"
            ;;
        attn)
            fits attn $((45 * PAIRS)) || continue
            local r
            for r in $(seq 1 "$PAIRS"); do
                local order="doctor torch"
                [ $((r % 2)) = 0 ] && order="torch doctor"
                local who
                for who in $order; do
                    if [ "$who" = doctor ]; then
                        echo "--- doctor (pair $r)"
                        timeout 120 "$V" doctor --device cuda --skip-models 2>&1 | grep -E "^\s+[0-9]+x[0-9]+ |B x T"
                    else
                        echo "--- torch attention, 30 repeats (pair $r)"
                        timeout 120 python3 scripts/bench_torch.py --skip-models 2>&1 | grep -E "^attn [0-9]"
                    fi
                done
            done > "$OUT/attn.log" 2>&1
            ;;
        large)
            fits large 90 || continue
            predict_runs esm2-3b "$RECORDS_3B" "$RUNS_3B" "$OUT/predict.log"
            ;;
        subbatch)
            fits subbatch 150 || continue
            local g
            g=$(genome "$RECORDS_3B")
            {
                local r mode
                # Alternated, each from an empty out-dir: whole padded batches, then sub-batches
                # of whole sequences within a 512 MiB activation budget.
                for r in 1 2; do
                    for mode in whole sub; do
                        rm -rf "/tmp/virnucpro-sb-$mode-$r"
                        echo "-- esm2-3b, $mode batches, run $r"
                        if [ "$mode" = sub ]; then
                            # shellcheck disable=SC2046
                            with_peak_memory "$OUT/checks.log" env VIRNUCPRO_SUB_BATCH_MIB=512 \
                                timeout "$(left)" $(predict_cmd esm2-3b "$g" "/tmp/virnucpro-sb-$mode-$r") -v
                        else
                            # shellcheck disable=SC2046
                            with_peak_memory "$OUT/checks.log" \
                                timeout "$(left)" $(predict_cmd esm2-3b "$g" "/tmp/virnucpro-sb-$mode-$r") -v
                        fi
                    done
                done
            } >> "$OUT/checks.log" 2>&1
            echo "sub-batches vs whole: $(same_results /tmp/virnucpro-sb-whole-1 /tmp/virnucpro-sb-sub-1)" >> "$OUT/checks.log"
            ;;
        pool)
            local shape variant
            for shape in $POOL_SHAPES; do
                local g records=$RECORDS_3B
                [ "$shape" = esm2-3b ] || records=$RECORDS
                g=$(genome "$records")
                for variant in default $POOL_VARIANTS; do
                    fits "pool-$shape-$variant" 40 || continue
                    local vars=()
                    case $variant in
                    default) vars=() ;;
                    dna256) vars=(VIRNUCPRO_DNA_SUB_BATCH_MIB=256) ;;
                    dna128) vars=(VIRNUCPRO_DNA_SUB_BATCH_MIB=128) ;;
                    sub512) vars=(VIRNUCPRO_SUB_BATCH_MIB=512) ;;
                    pfirst) vars=(VIRNUCPRO_PROTEIN_FIRST=1) ;;
                    dna256-pfirst) vars=(VIRNUCPRO_DNA_SUB_BATCH_MIB=256 VIRNUCPRO_PROTEIN_FIRST=1) ;;
                    *) echo "pool: unknown variant $variant" >> "$OUT/checks.log"; continue ;;
                    esac
                    local o=/tmp/virnucpro-pool-$shape-$variant
                    [ -d "$o" ] && o=$o-again
                    rm -rf "$o"
                    echo "-- $shape, pool variant $variant (${vars[*]:-defaults})" >> "$OUT/checks.log"
                    # shellcheck disable=SC2046
                    with_peak_memory "$OUT/checks.log" env "${vars[@]}" \
                        timeout "$(left)" $(predict_cmd "$shape" "$g" "$o") -v
                    grep -o "after group [0-9]*:.*" /tmp/virnucpro-cmd.log | head -n 6 | tr '\n' ';' >> "$OUT/checks.log"
                    echo >> "$OUT/checks.log"
                    echo "$variant vs default: $(same_results "/tmp/virnucpro-pool-$shape-default" "$o")" >> "$OUT/checks.log"
                done
            done
            ;;
        invariance)
            fits invariance 90 || continue
            local g
            g=$(genome "$RECORDS_CHECK")
            {
                local bt
                for bt in default 4096 100000; do
                    local extra=""
                    [ "$bt" = default ] || extra="--batch-tokens $bt"
                    # shellcheck disable=SC2046,SC2086
                    timeout "$(left)" $(predict_cmd esm2-650m "$g" /tmp/virnucpro-inv-$bt) $extra 2>&1 | tail -n 1
                done
                echo "--batch-tokens 4096 vs default: $(same_results /tmp/virnucpro-inv-default /tmp/virnucpro-inv-4096)"
                echo "--batch-tokens 100000 vs default: $(same_results /tmp/virnucpro-inv-default /tmp/virnucpro-inv-100000)"
            } > "$OUT/checks.log" 2>&1
            ;;
        resume)
            fits resume 90 || continue
            local g ref=/tmp/virnucpro-inv-default o=/tmp/virnucpro-resume
            g=$(genome "$RECORDS_CHECK")
            {
                # shellcheck disable=SC2046
                [ -d "$ref" ] || timeout "$(left)" $(predict_cmd esm2-650m "$g" "$ref") > /dev/null 2>&1
                rm -rf "$o"
                # shellcheck disable=SC2046
                $(predict_cmd esm2-650m "$g" "$o") > /tmp/virnucpro-resume1.log 2>&1 &
                local pid=$! t=0 total
                total=$(grep -c '^>' "$g")
                # Kill once about half of the ~1000 units are journaled.
                while [ "$(journal_units "$o/.virnucpro.journal")" -lt 400 ] && [ $t -lt 1200 ] && kill -0 $pid 2> /dev/null; do
                    sleep 0.1
                    t=$((t + 1))
                done
                echo "killed after $(journal_units "$o/.virnucpro.journal") units ($total records)"
                kill -9 $pid
                wait $pid 2> /dev/null
                ls -a "$o"
                # shellcheck disable=SC2046
                timeout "$(left)" $(predict_cmd esm2-650m "$g" "$o") 2>&1 | tail -n 2
                echo "resumed vs uninterrupted: $(same_results "$o" "$ref")"
                ls -a "$o"
            } >> "$OUT/checks.log" 2>&1
            ;;
        multi)
            fits multi 300 || continue
            local g n i t0 t1
            g=$(genome "$RECORDS_MULTI")
            n=$(nvidia-smi -L | wc -l)
            {
                echo "$n GPUs; $MULTI_SHAPE; $RECORDS_MULTI records"
                local m=/tmp/virnucpro-multi
                rm -rf "$m" && mkdir -p "$m"
                t0=$SECONDS
                # shellcheck disable=SC2046
                timeout "$(left)" $(predict_cmd "$MULTI_SHAPE" "$g" "$m/one" --device cuda:0) 2>&1 | tail -n 1
                t1=$SECONDS
                echo "one GPU: $((t1 - t0)) s wall"
                # shellcheck disable=SC2046
                timeout "$(left)" $(predict_cmd "$MULTI_SHAPE" "$g" "$m/all" --device cuda:all) 2>&1 | tail -n 1
                echo "cuda:all: $((SECONDS - t1)) s wall; vs one GPU: $(same_results "$m/all" "$m/one")"
                t1=$SECONDS
                for i in $(seq 1 "$n"); do
                    # shellcheck disable=SC2046
                    timeout "$(left)" $(predict_cmd "$MULTI_SHAPE" "$g" "$m/shard$i" --device cuda:$((i - 1)) --shard "$i/$n") > "$m/shard$i.log" 2>&1 &
                done
                wait
                "$V" merge "$m"/shard* --out-dir "$m/merged" 2>&1 | tail -n 1
                echo "$n processes --shard I/$n + merge: $((SECONDS - t1)) s wall; vs one GPU: $(same_results "$m/merged" "$m/one")"
                t1=$SECONDS
                # shellcheck disable=SC2046
                VIRNUCPRO_TEST_FAIL_DEVICE=1:20 timeout "$(left)" $(predict_cmd "$MULTI_SHAPE" "$g" "$m/failing" --device cuda:all) 2>&1 \
                    | grep -E "WARN|INFO [0-9]+ records|error" | cut -c1-300
                echo "cuda:all with GPU 1 failing: $((SECONDS - t1)) s wall; vs one GPU: $(same_results "$m/failing" "$m/one")"
            } >> "$OUT/checks.log" 2>&1
            ;;
        oom)
            fits oom 150 || continue
            local g
            g=$(genome "$RECORDS_OOM")
            {
                # shellcheck disable=SC2046
                timeout "$(left)" $(predict_cmd esm2-3b "$g" /tmp/virnucpro-oom-default) 2>&1 | tail -n 1
                # shellcheck disable=SC2046
                VIRNUCPRO_TEST_OOM_TOKENS=3000 timeout "$(left)" $(predict_cmd esm2-3b "$g" /tmp/virnucpro-oom-injected --batch-tokens 10000000) 2>&1 \
                    | grep -E "WARN|INFO [0-9]+ records|error" | cut -c1-300
                echo "injected out-of-memory vs default: $(same_results /tmp/virnucpro-oom-default /tmp/virnucpro-oom-injected)"
                # A real one: another process takes all but HOG_FREE_MB of the GPU's memory.
                python3 - "$HOG_FREE_MB" << 'PY' &
import sys, time, torch
free, total = torch.cuda.mem_get_info()
keep = int(sys.argv[1]) << 20
hog = torch.empty(max(free - keep, 0), dtype=torch.uint8, device="cuda")
print(f"hog: {hog.numel() >> 20} MiB taken, {(free - hog.numel()) >> 20} MiB left of {total >> 20}", flush=True)
time.sleep(300)
PY
                local hog=$!
                sleep 20
                nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader
                # shellcheck disable=SC2046
                timeout "$(left)" $(predict_cmd esm2-3b "$g" /tmp/virnucpro-oom-real --batch-tokens 10000000) 2>&1 \
                    | grep -E "WARN|INFO [0-9]+ records|error" | cut -c1-300
                kill $hog 2> /dev/null
                wait $hog 2> /dev/null
                echo "real out-of-memory vs default: $(same_results /tmp/virnucpro-oom-default /tmp/virnucpro-oom-real)"
            } >> "$OUT/checks.log" 2>&1
            ;;
        bench)
            fits bench 45 || continue
            {
                echo "-- bench --model esm2-3b --shapes 64x168,1x1026 --compare-attention"
                timeout 120 "$V" bench --model esm2-3b --device cuda --shapes 64x168,1x1026 --compare-attention 2>/dev/null
                echo "-- bench --model esm2-650m --ops --shapes 512x168"
                timeout 60 "$V" bench --model esm2-650m --device cuda --ops --shapes 512x168 2>/dev/null
            } > "$OUT/bench.log" 2>&1
            ;;
        *) echo "unknown step $step (tests doctor torch predict attn large bench subbatch pool invariance resume multi oom)" ;;
        esac
    done

    # Summary: the end of the output is what comes back first.
    echo
    echo "================ summary ($(date -u '+%Y-%m-%d %H:%M UTC'), ${SECONDS} s) ================"
    sed -n '1,6p' "$OUT/tests.log"
    grep -E "test result|cosine|score diff" "$OUT/tests.log" 2> /dev/null | head -n 8
    if [ -f "$OUT/doctor.log" ]; then
        grep -E "^\[|doctor exit" "$OUT/doctor.log" | cut -c1-200
        grep -E "^\s+[0-9]+x[0-9]+ |B x T" "$OUT/doctor.log" | cut -c1-200
    fi
    [ -f "$OUT/attn.log" ] && cat "$OUT/attn.log"
    [ -f "$OUT/torch.log" ] && sed -n '/== PyTorch baselines ==/,$p' "$OUT/torch.log" | grep -v "^gemm"
    [ -f "$OUT/predict.log" ] && grep -v "^wrote" "$OUT/predict.log" | sed 's/^.*INFO //' | cut -c1-200
    [ -f "$OUT/bench.log" ] && grep -E "^--|^ *[0-9]+x[0-9]+ " "$OUT/bench.log"
    [ -f "$OUT/checks.log" ] && sed 's/^.*INFO //' "$OUT/checks.log" | cut -c1-240
    if [ -n "$SKIPPED" ]; then
        echo "skipped for time:$SKIPPED; run them in another call: STEPS=\"${SKIPPED# }\" bash scripts/gpu-bench.sh run ${1:-.gpu-carry}"
    fi
    echo "logs: $(cd "$OUT" && ls | tr '\n' ' ')"
}

case ${1:-} in
pack) shift; pack "$@" ;;
run) shift; run "$@" ;;
*) sed -n '2,32p' "$0"; exit 2 ;;
esac
