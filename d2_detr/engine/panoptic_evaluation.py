"""COCO panoptic evaluation that survives splits without thing (or stuff) segments and reports
PQ per class."""

import contextlib
import json
import logging
import math

import panopticapi.evaluation as pq_eval
from detectron2.evaluation import COCOPanopticEvaluator
from detectron2.utils.file_io import PathManager

__all__ = ["DETRPanopticEvaluator"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _patched_pq_average(per_class_store):
    """
    Inside this context panopticapi's ``PQStat.pq_average``:

    * scores a group with no occurring category NaN instead of raising ZeroDivisionError (it
      divides by the number of categories that occur in ground truth or predictions, e.g. none
      of "Things" on a validation split without defects and a model that predicts none);
    * records PQ / SQ / RQ per category id in ``per_class_store``, NaN for a category that
      occurs in neither ground truth nor predictions (panopticapi reports 0 there).
    """
    original = pq_eval.PQStat.pq_average

    def pq_average(self, categories, isthing):
        try:
            result = original(self, categories, isthing)
        except ZeroDivisionError:
            per_class = {
                label: {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                for label, info in categories.items()
                if isthing is None or (info["isthing"] == 1) == isthing
            }
            result = {"pq": math.nan, "sq": math.nan, "rq": math.nan, "n": 0}, per_class
        for label, values in result[1].items():
            stat = self.pq_per_cat[label]
            occurs = stat.tp + stat.fp + stat.fn > 0
            per_class_store[label] = {k: v if occurs else math.nan for k, v in values.items()}
        return result

    pq_eval.PQStat.pq_average = pq_average
    try:
        yield
    finally:
        pq_eval.PQStat.pq_average = original


class DETRPanopticEvaluator(COCOPanopticEvaluator):
    """
    :class:`COCOPanopticEvaluator` whose PQ/SQ/RQ of a group with no occurring category (no thing
    or no stuff segment in ground truth and predictions) is NaN instead of an exception, and
    whose results add ``PQ_<class name>`` for every category (NaN where it never occurs).
    """

    def evaluate(self):
        per_class = {}
        with _patched_pq_average(per_class):
            results = super().evaluate()
        if not results or not per_class:  # not the main process, or nothing evaluated
            return results
        with PathManager.open(self._metadata.panoptic_json) as f:
            names = {c["id"]: c["name"] for c in json.load(f)["categories"]}
        lines = ["PQ per class:"]
        for label in sorted(per_class):
            values = {k: 100 * v for k, v in per_class[label].items()}
            results["panoptic_seg"][f"PQ_{names[label]}"] = values["pq"]
            lines.append(
                f"  {names[label]:>16s}  PQ {values['pq']:5.1f}  SQ {values['sq']:5.1f}  "
                f"RQ {values['rq']:5.1f}"
            )
        logger.info("\n".join(lines))
        return results
