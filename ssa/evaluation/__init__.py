"""Scoring: the confusion matrix and its scores (`metrics`), and a run or label maps scored
against a dataset's ground truth (`evaluate`)."""
