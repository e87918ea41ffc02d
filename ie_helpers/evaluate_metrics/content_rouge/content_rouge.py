"""ROUGE-L (rouge_score) on the content of extraction outputs: JSON values, not keys, quotes or brackets.

    rouge = evaluate.load("ie_helpers/evaluate_metrics/content_rouge")
    rouge.compute(predictions=['{"entities": ["Ada"]}'], references=['{"entities": ["Ada", "Paris"]}'])

An empty skeleton such as {"entities": [], "relations": []} has no content: it scores 1.0 against an empty
gold answer and 0.0 against any other, so the metric rewards what was extracted, not the format.
"""

import datasets
import evaluate
import numpy as np

from ie_helpers.metrics import content_rouge_l

_DESCRIPTION = __doc__


class ContentRouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description="JSON outputs and JSON gold answers",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        scores = content_rouge_l(predictions, references)
        return {"content_rouge_l": float(np.mean(scores)) if len(scores) else float("nan")}
