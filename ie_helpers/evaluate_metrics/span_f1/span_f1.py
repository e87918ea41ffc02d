"""Strict span micro-F1 (seqeval, IOB2) with hallucinated mentions counted as false positives.

    import evaluate
    span_f1 = evaluate.load("ie_helpers/evaluate_metrics/span_f1")   # or ie_helpers.metrics.evaluate_metric("span_f1")
    span_f1.compute(predictions=[["B-PER", "O"]], references=[["B-PER", "O"]], hallucinated=[0])
"""

import datasets
import evaluate

from ie_helpers.ner import score_ner

_DESCRIPTION = __doc__


class SpanF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description="IOB2 tag lists per sentence",
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("string")),
                                        "references": datasets.Sequence(datasets.Value("string"))}))

    def _compute(self, predictions, references, hallucinated=None):
        """``hallucinated``: per sentence, predicted mentions that are not in the text (no span, so seqeval
        cannot see them); they are added to the false positives of ``micro_f1_halluc_fp``."""
        res = score_ner([list(r) for r in references], [list(p) for p in predictions])
        extra = int(sum(hallucinated or []))
        tp, n_pred, n_gold = res["n_correct"], res["n_pred"] + extra, res["n_gold"]
        return {"micro_f1": res["micro_f1"], "micro_precision": res["micro_precision"],
                "micro_recall": res["micro_recall"], "macro_f1": res["macro_f1"],
                "micro_f1_halluc_fp": 2 * tp / (n_pred + n_gold) if tp else 0.0, "hallucinated": extra,
                "n_gold": n_gold, "n_pred": res["n_pred"], "n_correct": tp}
