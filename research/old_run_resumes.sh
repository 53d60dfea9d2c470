#!/usr/bin/env bash
# Does a run folder written by an older commit resume under the current code, with the tables an
# unbroken run gives? (issue 29: the package move must not strand existing runs.)
#   research/old_run_resumes.sh [OLD_COMMIT] [CONFIG]
# Runs iteration 0 with OLD_COMMIT's code (a git worktree, this checkout's .venv), iteration 1 with
# the current code in the same folder, and both iterations in a fresh folder with the current code;
# then lists the stages the resume redid and compares every Parquet table of the two folders.
set -euo pipefail
OLD=${1:-6b30437}
CONFIG=${2:-configs/tiny.yaml}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=$REPO/.venv/bin/python
WORK=$(mktemp -d /tmp/old-run-resumes.XXXX)
git -C "$REPO" worktree add --detach "$WORK/old" "$OLD" >/dev/null
trap 'git -C "$REPO" worktree remove --force "$WORK/old"; echo "run folders in $WORK"' EXIT
# the old code, from its own tree (PYTHONPATH first), in the current checkout's directory so the
# config's relative paths (data/tiny-model) mean the same thing; -P keeps the cwd off sys.path
(cd "$REPO" && PYTHONPATH="$WORK/old" "$PY" -P -c "import spark_core, sys; assert spark_core.__file__.startswith('$WORK/old'), spark_core.__file__; from spark_cli.main import app; sys.argv=['spark','iterate','-c','$CONFIG','--run','$WORK/resumed','--iterations','1']; app()")
cp -r "$WORK/resumed/manifests" "$WORK/manifests-old"
(cd "$REPO" && "$PY" -m spark_cli.main iterate -c "$CONFIG" --run "$WORK/resumed" --iterations 1)
(cd "$REPO" && "$PY" -m spark_cli.main iterate -c "$CONFIG" --run "$WORK/unbroken" --iterations 2)
"$PY" - "$WORK" <<'PY'
import json, sys
from pathlib import Path
import pyarrow.parquet as pq
work = Path(sys.argv[1])
a, b, old = work / "resumed", work / "unbroken", work / "manifests-old"
# a stage the new code redid rewrites its manifest: its finished_at moves
redone = [str(m.relative_to(old)) for m in sorted(old.rglob("*.json"))
          if json.loads(m.read_text()).get("finished_at") != json.loads((a / "manifests" / m.relative_to(old)).read_text()).get("finished_at")]
print(f"old manifests: {len(list(old.rglob('*.json')))}, redone by the new code: {redone or 'none'}")
def timeless(t):  # `seconds` (wall clock) differs between any two runs, `run` is the folder's name
    return t.drop([c for c in t.column_names if c in ("seconds", "run")])
tables = sorted(p.relative_to(b) for p in b.rglob("*.parquet"))
diff = [str(t) for t in tables if not (a / t).exists() or not timeless(pq.read_table(a / t)).equals(timeless(pq.read_table(b / t)))]
print(f"tables: {len(tables)}, differing (wall-clock and run-name columns aside): {diff or 'none'}")
sys.exit(1 if diff or redone else 0)
PY
