"""Evaluation: the classifier that scores generated samples (``evaluator``) and the metrics of results.json
(``metrics``)."""
