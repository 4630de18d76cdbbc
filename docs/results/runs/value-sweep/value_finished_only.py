"""`syncrl eval ... --value DIR` with the value diagnostics also over the answers that finished
(not cut at the token limit): is V at the last state more than a detector of unfinished answers?"""

import sys

import launch.evaluate as E
from launch.cli import main
from rollout.evaluation import auc, is_correct, value_diagnostics


def diagnostics(v_s0, v_last, samples):
    out = value_diagnostics(v_s0, v_last, samples)
    fin = [i for i, s in enumerate(samples) if s.finish_reason != "length"]
    correct = [is_correct(samples[i]) for i in fin]
    out["finished_answers"] = len(fin)
    out["finished_correct"] = sum(correct)
    out["truncated_correct"] = sum(is_correct(s) for s in samples if s.finish_reason == "length")
    for key, v in (("value_auc_last_finished", v_last), ("value_auc_s0_finished", v_s0)):
        a = auc([v[i] for i in fin], correct)
        out[key] = -1.0 if a is None else a
    return out


E.value_diagnostics = diagnostics

sys.exit(main(sys.argv[1:]))
