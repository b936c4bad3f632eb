"""The nemesis harness of issue 14: real ``p2preg run`` nodes, each in its own network namespace
on a bridge of its own, SIP clients recording a history, faults on a schedule from a seed
(partitions, pauses, kill -9, graceful leave, clock jumps, an autoscaler), and a checker over
the history once the faults are healed.

``python scripts/nemesis/run.py --seed S --minutes M`` (or ``make nemesis``) runs it;
tests/test_nemesis_smoke.py is the short run of the default suite.
"""
