#!/bin/bash
# On the lent GPU machine (the device tool), from the repository root, with .gpu/ carried (this
# folder's .py files, the packed data in .gpu/data, the keras, namex and optree wheels in .gpu/whl):
# one gpu_train.py run per argument, side by side on the one GPU, then collect.py -> $OUT.
#   DEADLINE=420 HARD=545 bash .gpu/device.sh "A --seed 1" "B --seed 2 --mixup 0.2" "C --seed 3 --wd 5e-3"
#   DEADLINE=205 HARD=268 bash .gpu/device.sh "D --seed 21 --crop 44" "E --seed 22"
# Distillation (README: "Next"): call 1 trains teacher members, call 2 the students.
#   DEADLINE=230 HARD=300 bash .gpu/device.sh "T1 --seed 41 --train-probs" "T2 --seed 42 --train-probs" ...
cd .gpu || exit 2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$(cd .. && pwd)/src KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-420}
HARD=${HARD:-545}
echo "=== $(date -u '+%F %T UTC') device run; deadline ${DEADLINE}s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(nproc) cores"
W=/tmp/work
mkdir -p $W
for spec in "$@"; do
  set -- $spec
  name=$1; shift
  (timeout $HARD python3 gpu_train.py --data data --work $W --run $name --deadline $DEADLINE --require-gpu "$@" \
     > $W/$name.log 2>&1; echo "run $name exit $?" >> $W/$name.log) &
done
sleep 75; tail -n 3 $W/*.log; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
wait
python3 collect.py $W "$OUT" 2
# runs with --train-probs are teacher members: their mean (with any data/members/*.npy made here by
# `gpu_train.py probs`) comes back as teacher.npy, for the next call's --teacher data/teacher.npy
if ls $W/*-train-probs.npy > /dev/null 2>&1; then
  python3 gpu_train.py teacher "$OUT/teacher.npy" $W/*-train-probs.npy $(ls data/members/*.npy 2>/dev/null)
fi
tail -n 4 $W/*.log
echo "=== $(date -u '+%F %T UTC') done"
