"""Share of outputs that are strict JSON (the whole output is one JSON value) and leniently recoverable JSON.

    parse = evaluate.load("ie_helpers/evaluate_metrics/json_parse_rate")
    parse.compute(predictions=['{"a": 1}', 'Sure! ```json\n{"a": 1}\n```', "no"])
"""

import datasets
import evaluate

from ie_helpers.metrics import parse_rates
from ie_helpers.parsing import parse_json

_DESCRIPTION = __doc__


class JsonParseRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description="model outputs",
            features=datasets.Features({"predictions": datasets.Value("string")}))

    def _compute(self, predictions):
        return parse_rates([parse_json(p) for p in predictions])
