#!/usr/bin/env bash
# The paper's CUB experiments: {Conv-4, ResNet-12} x {1-shot, 5-shot} x {image, text} students,
# each as teacher -> student + CMKD -> student alone, scored on the same 2000 novel episodes; image students
# also with language-shaped learning (LSL, Mu et al. 2020; weight 5), alone and with CMKD.
# Needs a prepared cache (cmkd prepare cub ... --name cub_84) and, realistically, a GPU.
#
#   bash scripts/run_paper.sh            # run the grid (a run that exists resumes where it stopped)
#   bash scripts/run_paper.sh --dry-run  # print every run's effective config (YAML documents) instead
#
# Every run has its own name; command-line flags win over the YAML files (defaults < file < flags < key=value).
set -euo pipefail
cd "$(dirname "$0")/.."
cmkd="${CMKD:-cmkd}"
dry=()
if [[ "${1:-}" == "--dry-run" ]]; then dry=(--print-config); fi

run() {  # run NAME SUBCOMMAND ARGS...: a training run (resumed when runs/NAME holds one), or its config
  local name="$1" again=()
  if [[ -e "runs/$name/last.json" || -e "runs/$name/plateau.json" ]]; then again=(--resume); fi
  if [[ ${#dry[@]} -gt 0 ]]; then echo "---"; fi
  "$cmkd" "$2" "${dry[@]}" --name "$name" "${again[@]}" "${@:3}"
}

evaluate() {
  if [[ ${#dry[@]} -gt 0 ]]; then echo "# evaluate $*"; else "$cmkd" evaluate "$@"; fi
}

for bb in conv4 resnet12; do
  for shot in 1 5; do
    t="cub_${bb}_${shot}shot_teacher"
    run "$t" train --config "cub/${bb}_teacher" "episode.shot=$shot"
    for modality in image text; do
      s="cub_${bb}_${shot}shot_${modality}"
      run "${s}_cmkd" distill --config "cub/${bb}_cmkd" --teacher "runs/$t" --modality "$modality" \
        "episode.shot=$shot"
      run "${s}_alone" train --config "cub/${bb}_student" --modality "$modality" "episode.shot=$shot"
      lsl=()
      if [[ "$modality" == image ]]; then
        run "${s}_lsl" train --config "cub/${bb}_student" "episode.shot=$shot" lsl.weight=5
        run "${s}_cmkd_lsl" distill --config "cub/${bb}_cmkd" --teacher "runs/$t" --modality image \
          "episode.shot=$shot" lsl.weight=5
        lsl=("student+LSL=runs/${s}_lsl" "student+CMKD+LSL=runs/${s}_cmkd_lsl")
      fi
      evaluate "student=runs/${s}_alone" "student+CMKD=runs/${s}_cmkd" "${lsl[@]}" "teacher=runs/$t" \
        --shots "$shot" --fine-grained --episodes 2000 --out "runs/${s}_evaluation.json"
    done
  done
done
