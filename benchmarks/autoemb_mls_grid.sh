#!/usr/bin/env bash
# FSE and AutoEmb on ml-latest-small, both tasks, seeds 1-3, with the given DLRS optimiser and
# learning rate (docs/autoemb.md, Results); METHODS and SEEDS (default "fse autoemb", "1 2 3") override:
#   bash benchmarks/autoemb_mls_grid.sh OPTIMIZER LR OUT [extra --set arguments...]
#   bash benchmarks/autoemb_mls_grid.sh sgd 0.01 runs/mls-sgd-lr01
# Needs prepared/mls-stream (embdim stream prepare movielens ../shared/data/ml-latest-small
# --out prepared/mls-stream). Finished runs are skipped, so the script can be re-run.
set -euo pipefail
opt=$1; lr=$2; out=$3; shift 3
PY=${PYTHON:-python}
for task in regression classification; do for seed in ${SEEDS:-1 2 3}; do for m in ${METHODS:-fse autoemb}; do
  dir=$out/$m-$task-$seed
  [ -f "$dir/metrics.json" ] && continue
  rm -rf "$dir"
  $PY -m embdim --quiet stream run examples/autoemb.yaml --set data.path=prepared/mls-stream \
      --set train.optimizer=$opt --set train.lr=$lr --set method.name=$m --set model.task=$task \
      --set train.seed=$seed "$@" --out "$dir"
done; done; done
