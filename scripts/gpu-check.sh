#!/usr/bin/env bash
# gpu-check.sh: build the Kiln GPU check here, run it on a lent GPU machine.
#
# The GPU machine has CUDA but no .NET SDK and no network, and runs one command in a copy of this working tree plus
# up to 64 MiB of carried ignored paths. So: on the build machine, `scripts/gpu-check.sh publish` writes a
# self-contained linux-x64 single-file executable (runtime included, compressed, about 40 MiB) to
# artifacts/gpucheck/ (ignored by git) and prints its size. Then call the device tool with
# carry ["artifacts/gpucheck"] and the command `scripts/gpu-check.sh run` (timeout_s about 560): it runs
# `kiln-gpucheck --device cuda --size full --out "$OUT"` under `timeout`, prints the Markdown tables to stdout and
# leaves $OUT/gpucheck.json (plus stdout/stderr copies) to fetch. `run` passes extra arguments through, e.g.
# `scripts/gpu-check.sh run --sections correctness,bandwidth` or `--opt O2`. For a local dry run of the published
# binary on ILGPU's CPU accelerator (tiny shapes, about 20 s): `GPUCHECK_LOCAL=1 scripts/gpu-check.sh run`.
# Exit code of `run`: the check's (0 all passed, 1 a check failed, 2 no device or bad flags; 124 timed out).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
folder="$root/artifacts/gpucheck"
binary="$folder/kiln-gpucheck"
limit="${GPUCHECK_TIMEOUT:-540}"

case "${1:-}" in
  publish)
    # Self-contained single file (the project turns these on when a runtime identifier is given).
    rm -rf "$folder"
    dotnet publish "$root/samples/Kiln.GpuCheck/Kiln.GpuCheck.csproj" -c Release -r linux-x64 -o "$folder" \
      -p:DebugType=embedded -nologo -v quiet
    rm -f "$folder"/*.pdb
    bytes=$(du -sb "$folder" | cut -f1)
    echo "gpu-check: published $binary: $((bytes / 1048576)) MiB ($bytes bytes; the device tool carries 64 MiB at most)"
    if (( bytes > 64 * 1048576 )); then
      echo "gpu-check: error: the publish folder is over 64 MiB; it cannot be carried to the GPU machine." >&2
      exit 1
    fi
    ;;
  run)
    shift
    if [[ ! -x "$binary" ]]; then
      echo "gpu-check: error: $binary is missing; run 'scripts/gpu-check.sh publish' on the build machine and carry artifacts/gpucheck." >&2
      exit 2
    fi

    # Where results go: $OUT on the GPU machine, else a folder under artifacts/.
    out="${OUT:-$root/artifacts/gpucheck-out}"
    mkdir -p "$out"
    if [[ -n "${GPUCHECK_LOCAL:-}" ]]; then
      device=(--device ilgpu-cpu --size small)
    else
      device=(--device cuda --size full)
      nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv \
        > "$out/nvidia-smi.csv" 2>&1 || true
    fi

    # The tables go to stdout and to a copy in $out; progress to stderr and its copy.
    set +e
    timeout --kill-after=10 "$limit" "$binary" "${device[@]}" --out "$out" "$@" \
      > >(tee "$out/gpucheck.md") 2> >(tee "$out/gpucheck.stderr" >&2)
    status=$?
    set -e
    wait
    echo "gpu-check: exit code $status; results in $out"
    exit "$status"
    ;;
  *)
    echo "usage: scripts/gpu-check.sh publish | run [kiln-gpucheck flags]   (GPUCHECK_LOCAL=1 run: ilgpu-cpu, small)" >&2
    exit 2
    ;;
esac
