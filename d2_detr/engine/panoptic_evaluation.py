"""COCO panoptic evaluation that survives splits without thing (or stuff) segments."""

import contextlib
import math

import panopticapi.evaluation as pq_eval
from detectron2.evaluation import COCOPanopticEvaluator

__all__ = ["DETRPanopticEvaluator"]


@contextlib.contextmanager
def _empty_groups_give_nan():
    """
    panopticapi's ``PQStat.pq_average`` divides by the number of categories that occur (in the
    ground truth or the predictions) and raises ZeroDivisionError when none of a group does, e.g.
    "Things" on a validation split with no defect and a model that predicts none. Inside this
    context such a group scores NaN (undefined) instead.
    """
    original = pq_eval.PQStat.pq_average

    def pq_average(self, categories, isthing):
        try:
            return original(self, categories, isthing)
        except ZeroDivisionError:
            per_class = {
                label: {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                for label, info in categories.items()
                if isthing is None or (info["isthing"] == 1) == isthing
            }
            return {"pq": math.nan, "sq": math.nan, "rq": math.nan, "n": 0}, per_class

    pq_eval.PQStat.pq_average = pq_average
    try:
        yield
    finally:
        pq_eval.PQStat.pq_average = original


class DETRPanopticEvaluator(COCOPanopticEvaluator):
    """:class:`COCOPanopticEvaluator` whose PQ/SQ/RQ of a group with no occurring category (no
    thing or no stuff segment in ground truth and predictions) is NaN instead of an exception."""

    def evaluate(self):
        with _empty_groups_give_nan():
            return super().evaluate()
