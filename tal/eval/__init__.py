"""Evaluation: ActivityNet-exact detection mAP, OV-TAL protocols, reports and plots."""
