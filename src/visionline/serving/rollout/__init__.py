"""Rollouts: a challenger beside the champion (shadow or canary), judged by statistics.

``verdict`` holds the statistics (pure functions); ``evidence`` reads what both sides
answered (the front's request log, the captures, late labels); ``local`` runs a rollout
on this machine; ``watch`` rolls a canary back when it does worse than the champion.
"""
