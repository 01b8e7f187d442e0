"""The pieces of `bench/run`: one module per idea, one per measurement family.

Shared: `results` (the result schema, ratios, targets, the table), `machine` (what was
measured on), `progress` (stderr feedback), `pair` (a gateway pair as processes, RSS sampling,
metrics, audit logs), `baselines` (the hardware work zonegate cannot avoid), `stages` and
`latency` (pure: what the agents' own audit records say about time), `sshd` (a private OpenSSH
server), `tmpfs`, `profile` (py-spy).

Families: `large` (one big file, on disk and on tmpfs against scp), `small` (a flood of 1 KiB
files, then a paced feed for latency), `udp` (bench/udp_compare.py as a subprocess).
"""
