"""Micro set F1 over what JSON extraction outputs mean: entities, triples, or both (a record).

    set_f1 = evaluate.load("ie_helpers/evaluate_metrics/set_f1")
    set_f1.compute(predictions=['[{"type": "PER", "text": "Ada"}]'], references=[...], task="ner")

Outputs are parsed leniently (prose and code fences tolerated); an unparseable output predicts nothing.
When nothing is to be found and nothing was found, F1 is 1.0 (see ie_helpers.metrics).
"""

import datasets
import evaluate

from ie_helpers.metrics import OUTPUT_MEANING, set_prf

_DESCRIPTION = __doc__


class SetF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description="JSON outputs and JSON gold answers",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, task="ner"):
        """``task``: "ner" (entity list), "kge" (triple list) or "json" (record of entities and relations)."""
        if task not in OUTPUT_MEANING:
            raise ValueError(f"task={task!r}: use one of {', '.join(OUTPUT_MEANING)}")
        meaning = OUTPUT_MEANING[task]
        return set_prf([meaning(p)[0] for p in predictions], [meaning(r)[0] for r in references])
