"""Micro set F1 over what JSON extraction outputs mean: entities, triples, or both (a record).

    set_f1 = evaluate.load("ie_helpers/evaluate_metrics/set_f1")
    set_f1.compute(predictions=['[{"type": "PER", "text": "Ada"}]'], references=[...], task="ner")
    set_f1.compute(predictions=['[["Ada", "works for", "IBM"]]'], references=[...], task="kge", exact=True)

Outputs are parsed leniently (prose and code fences tolerated); an unparseable output predicts nothing.
Mentions are normalised (case, spacing, surrounding punctuation); ``exact=True`` (triples only) folds only case and
spacing, as a strict triple scorer does (the clinical paper's relation extraction).
When nothing is to be found and nothing was found, F1 is 1.0 (see ie_helpers.metrics).
"""

import datasets
import evaluate

from ie_helpers.metrics import OUTPUT_MEANING, exact_triples_meaning, set_prf

_DESCRIPTION = __doc__


class SetF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description="JSON outputs and JSON gold answers",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, task="ner", exact=False):
        """``task``: "ner" (entity list), "kge" (triple list) or "json" (record of entities and relations);
        ``exact``: compare triple texts with only case and spacing folded (task "kge")."""
        if task not in OUTPUT_MEANING:
            raise ValueError(f"task={task!r}: use one of {', '.join(OUTPUT_MEANING)}")
        if exact and task != "kge":
            raise ValueError(f"exact=True compares triples: use it with task='kge', not {task!r}")
        meaning = exact_triples_meaning if exact else OUTPUT_MEANING[task]
        return set_prf([meaning(p)[0] for p in predictions], [meaning(r)[0] for r in references])
